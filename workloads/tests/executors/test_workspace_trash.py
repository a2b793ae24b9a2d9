"""A removed workspace leaves its path at once, where no workload uid can reach it, and is deleted soon after."""

import os
import stat
import time

from workloads.executors.workspace import TRASH_FOLDER, trash_for


def wait_until(condition, *, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_removed_workspace_is_gone_from_its_path_at_once_and_deleted_later(tmp_path):
    workspaces = tmp_path / "node"
    gone = workspaces / "w1"
    (gone / "upper" / "deep").mkdir(parents=True)
    (gone / "upper" / "deep" / "out.txt").write_text("x")
    leftover = workspaces / TRASH_FOLDER / "w0.crashed"  # what an agent killed mid-way left
    leftover.mkdir(parents=True)

    trash = trash_for(workspaces)
    trash.put(gone)

    assert not gone.exists()  # the path is free for the next run before anything is deleted
    mode = (workspaces / TRASH_FOLDER).stat().st_mode
    assert stat.S_IMODE(mode) == 0o700  # nobody but its owner (the agent) can reach what it holds
    assert wait_until(lambda: not os.listdir(workspaces / TRASH_FOLDER))
    assert not leftover.exists()
    assert trash_for(workspaces) is trash
