"""Workspaces stand on one shared layer (a shape) that opens the work folder's top folders to the
workload and hides the agent's: made once per state of the work folder's top, not per start."""

import shutil
import stat
import subprocess

import pytest

from workloads.executors.identity import Identity, IdentityError, isolation_at_start
from workloads.executors.workspace import SHAPES_FOLDER, Workspace, node_workspaces, prune_shapes

from .conftest import needs_root

pytestmark = needs_root

UID = 250_001


def as_workload(view, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("setpriv"), f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--",
                           "/bin/sh", "-c", script], cwd=view, capture_output=True, text=True)


def test_views_share_one_shape_that_opens_the_top_folders_and_hides_the_agents(tmp_path):
    lower = tmp_path / "work"
    (lower / "models").mkdir(parents=True)
    (lower / "models" / "old.txt").write_text("old\n")
    (lower / "var" / "agent").mkdir(parents=True)
    (lower / "var" / "agent" / "secret").write_text("secret")
    (lower / "var" / "public.txt").write_text("public")
    root, hidden = tmp_path / "workspaces", [lower / "var" / "agent"]
    shapes = node_workspaces(root, "n") / SHAPES_FOLDER
    workspaces = [Workspace(root=root, node_id="n", workload_id=f"w{i}") for i in range(3)]
    try:
        first, second = (w.prepare(lower=lower, identity=Identity(uid=UID, gid=UID), hidden=hidden)
                         for w in workspaces[:2])
        assert len(list(shapes.iterdir())) == 1  # made once, for both

        wrote = as_workload(first, "echo new > models/new.txt && cat models/old.txt && ls var")
        assert wrote.returncode == 0, wrote.stderr
        assert wrote.stdout.split() == ["old", "public.txt"]  # read through; the agent's folder hidden
        assert stat.S_IMODE((first / "models").stat().st_mode) == 0o777
        assert not (lower / "models" / "new.txt").exists() and not (second / "models" / "new.txt").exists()
        assert as_workload(first, "cat var/agent/secret").returncode != 0

        (lower / "data").mkdir()  # a new top folder: the next view opens it too, from a new shape
        third = workspaces[2].prepare(lower=lower, identity=Identity(uid=UID, gid=UID), hidden=hidden)
        assert as_workload(third, "echo x > data/x").returncode == 0
        assert len(list(shapes.iterdir())) == 2

        stale = shapes / "from-an-earlier-agent"
        stale.mkdir()
        prune_shapes(node_workspaces(root, "n"))
        assert not stale.exists() and len(list(shapes.iterdir())) == 2  # those in use stay
    finally:
        for workspace in workspaces:
            workspace.remove()


def test_workspaces_inside_the_work_folder_are_refused_when_the_agent_starts(tmp_path, settings):
    """A shape would lie inside the work folder, the other lower layer: overlayfs refuses that."""
    settings.CNET_WORKLOAD_ISOLATION = True
    settings.CNET_WORKSPACE_DIR = tmp_path / "work" / "workspaces"
    with pytest.raises(IdentityError, match="inside the work folder"):
        isolation_at_start(node_id="n", data_dir=tmp_path / "data", work_dir=tmp_path / "work")
