"""Fixtures for the containment tests: a real in-process agent as the shipped one runs (root,
cgroup v1 here), driven through the API by a user without staff rights."""

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.helpers import in_process_agents, supervise_until, workload_row
from workloads.models import ACTIVE

SECRET_KEY = "probe-secret-key-do-not-print"
ADMIN_PASSWORD = "probe-admin-password-do-not-print"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="workloads get their own uids only under a root agent")
needs_cgroup_v1 = pytest.mark.skipif(
    not os.access("/sys/fs/cgroup/pids/cgroup.procs", os.W_OK) or os.path.exists("/sys/fs/cgroup/cgroup.controllers"),
    reason="needs a writable cgroup v1 pids controller")


@pytest.fixture
def site(settings):
    """A work folder laid out as the shipped one (the agent's data folder is ``var/`` inside it,
    holding the control plane's secrets in world-readable files, so only the folder guards them),
    and a workspace root outside any private folder."""
    root = Path(tempfile.mkdtemp(prefix="cnet-site-"))
    workspaces = Path(tempfile.mkdtemp(prefix="cnet-ws-"))
    (root / "var").mkdir()
    for name, secret in (("secret_key", SECRET_KEY), ("admin_password", ADMIN_PASSWORD)):
        (root / "var" / name).write_text(secret)
        (root / "var" / name).chmod(0o644)
    (root / "examples" / "ml").mkdir(parents=True)
    (root / "examples" / "hello.txt").write_text("read through the workspace\n")
    (root / "models").mkdir()  # exists and is root's: the workload may still write in it
    os.chmod(root, 0o755)
    settings.CNET_WORKSPACE_DIR = workspaces
    settings.CNET_WORKLOAD_ISOLATION = True  # the suite may run without it (cnetsite/settings_test.py)
    yield root
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(workspaces, ignore_errors=True)


@pytest.fixture
def make_site_agent(live_server, site):
    """``make_site_agent(**options)``: a registered in-process agent whose work folder is the site
    and whose data folder is the site's ``var/``; ``make_site_agent(config=agent.config)``: that
    node's agent after a restart (not registered yet)."""
    with in_process_agents(live_server.url) as make:
        def build(*, config=None, **options):
            if config is not None:
                return make(config=config)
            agent = make(f"contain-{uuid.uuid4().hex[:6]}", work_dir=site, data_dir=site / "var", **options)
            agent.register()
            return agent

        yield build


def submit(api, node_id: str, command: str, *args: str, expect: int = 201, requirements: dict | None = None,
           **config) -> dict:
    """Submit a process workload through the API, as ``api``'s user (``requirements`` added to its own)."""
    answer = api.post("/api/workloads", {
        "name": "probe", "type": "process", "node": node_id,
        "config": {"command": command, "args": list(args), **config},
        "requirements": {"cpu": 0.1, "memory": 256 * 1024 * 1024, **(requirements or {})},
    }, format="json")
    assert answer.status_code == expect, answer.content
    return answer.json()


def run_to_end(agent, workload_id, *, timeout: float = 20):
    agent.start(str(workload_id))
    return supervise_until(agent, lambda: (row := workload_row(workload_id)).status not in ACTIVE and row,
                           timeout=timeout, message=f"workload {workload_id} ended")


def output(api, workload_id) -> str:
    answer = api.get(f"/api/workloads/{workload_id}/logs")
    assert answer.status_code == 200, answer.content
    return answer.json()["logs"]
