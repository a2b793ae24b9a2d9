"""Test settings: the real settings, with data (SQLite file, embedded broker) in a fresh folder."""

import os
import sys
import tempfile

from workloads.executors.reach import others_may_run

os.environ.setdefault("CNET_DATA_DIR", tempfile.mkdtemp(prefix="cnet-test-"))
os.environ.setdefault("CNET_LOCAL_NODE_ID", "local")
# A root agent runs workloads as other uids (issue 15); they can run this interpreter only where
# every folder above it lets others through (not under a 0700 /root, as on the dev machines).
# There the suite runs workloads as the agent's user; the containment tests turn isolation on.
os.environ.setdefault("CNET_WORKLOAD_ISOLATION", "1" if others_may_run(sys.executable) else "0")
# In the environment, so child processes (agents, a live web) get them too: a test on a server
# database is not embedded, and the suite submits and logs in far more often than a person.
os.environ.setdefault("SECRET_KEY", "test-only-" + os.urandom(8).hex())
os.environ.setdefault("CNET_THROTTLE_SUBMISSIONS", "100000/min")
os.environ.setdefault("CNET_THROTTLE_LOGIN", "100000/min")

from .settings import *  # noqa: E402,F403

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, as in production: an in-memory shared-cache test database answers concurrent
    # writers with "database table is locked" at once instead of waiting on the busy timeout.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}  # noqa: F405

# PBKDF2's cost is for attackers, not for a suite that creates a user per test.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
