"""Test settings: the real settings, with data (SQLite file, embedded broker) in a fresh folder."""

import os
import tempfile

os.environ.setdefault("CNET_DATA_DIR", tempfile.mkdtemp(prefix="cnet-test-"))
os.environ.setdefault("CNET_LOCAL_NODE_ID", "local")

from .settings import *  # noqa: E402,F403
