"""Test settings: the real settings, with data (SQLite file, embedded broker) in a fresh folder."""

import os
import tempfile

os.environ.setdefault("CNET_DATA_DIR", tempfile.mkdtemp(prefix="cnet-test-"))
os.environ.setdefault("CNET_LOCAL_NODE_ID", "local")

from .settings import *  # noqa: E402,F403

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, as in production: an in-memory shared-cache test database answers concurrent
    # writers with "database table is locked" at once instead of waiting on the busy timeout.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}  # noqa: F405

# PBKDF2's cost is for attackers, not for a suite that creates a user per test.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
