"""A live control plane (pytest-django's ``live_server``) with an agent that runs its work, and
``cnet`` itself, the installed executable, run as a subprocess against it."""

import json
import os
import pty
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from tests.helpers import ML_NODE_CAPABILITIES, GiB, in_process_agents

CNET = Path(sys.executable).with_name("cnet")
# How often the agent below asks for work and supervises what it runs.
AGENT_PASS_SECONDS = 0.05
BEAT_EVERY_PASSES = 5


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


class Cli:
    """``cnet`` against the live server, as a user whose config folder is ``home``."""

    def __init__(self, server: str, token: str | None, home: Path):
        self.server, self.token, self.home = server, token, home

    def env(self, **changes) -> dict:
        """The user's environment: no CNET_* of the test runner's; a change to None removes a variable."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("CNET_")}
        env |= {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"), "CNET_SERVER": self.server,
                "CNET_TOKEN": self.token, **changes}
        return {key: value for key, value in env.items() if value is not None}

    def __call__(self, *args: str, timeout: float = 60, **env) -> Result:
        done = subprocess.run([str(CNET), *args], env=self.env(**env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        return Result(done.returncode, done.stdout, done.stderr)

    def on_terminal(self, *args: str, timeout: float = 60) -> tuple[Result, str]:
        """``cnet`` with its stderr on a terminal (a pseudo-terminal read back): what it shows there."""
        terminal, child_end = pty.openpty()
        try:
            done = subprocess.run([str(CNET), *args], env=self.env(COLUMNS="120"), stdout=subprocess.PIPE,
                                  stderr=child_end, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        finally:
            os.close(child_end)
        shown = b""
        try:
            while chunk := os.read(terminal, 65536):
                shown += chunk
        except OSError:  # EIO: everything written has been read
            pass
        finally:
            os.close(terminal)
        return Result(done.returncode, done.stdout, ""), shown.decode(errors="replace")


@pytest.fixture(scope="session", autouse=True)
def cnet_installed():
    assert CNET.is_file(), f"{CNET} is missing: `make run` / `make test` install it (pip install -e .)"


@pytest.fixture
def node_id():
    return f"cli-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def agent(live_server, node_id):
    """An agent for a 1-CPU, 1 GiB node that runs processes and trains models, registered,
    heartbeating, asking for work and supervising it in a thread of its own, as ``runagent``'s
    loop does, until the test ends."""
    with in_process_agents(live_server.url) as make:
        agent = make(node_id, cpu=1, memory=GiB, capabilities=ML_NODE_CAPABILITIES)
        agent.register()
        stop = threading.Event()

        def loop():
            passes = 0
            while not stop.is_set():
                if passes % BEAT_EVERY_PASSES == 0:
                    agent.heartbeat_once()  # its answer carries stops (runagent hears of them by doorbell)
                agent.start()
                agent.supervise_once()
                passes += 1
                stop.wait(AGENT_PASS_SECONDS)

        thread = threading.Thread(target=loop, name=f"agent {node_id}", daemon=True)
        thread.start()
        try:
            yield agent
        finally:
            stop.set()
            thread.join(timeout=30)
            agent.shutdown()


@pytest.fixture
def token(transactional_db):
    user = get_user_model().objects.create_superuser("cli", password="pw")
    return Token.objects.create(user=user).key


@pytest.fixture
def cnet(live_server, token, tmp_path) -> Cli:
    return Cli(live_server.url, token, tmp_path)
