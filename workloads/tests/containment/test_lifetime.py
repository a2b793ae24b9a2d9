"""Issue 15, point 2: nothing outlives its workload (stop, delete, an agent restart), ``setsid``
and double-forked children included, and a fork bomb stays inside its pids limit. Through the
API, as a user without staff rights, on a real agent with real processes (cgroup v1 here)."""

import os
from pathlib import Path

import psutil
import pytest

from tests.helpers import supervise_until, wait_for, workload_row
from workloads.executors.limits import CGROUP_ROOT, CgroupLimiter

from .conftest import needs_cgroup_v1, needs_root, submit

pytestmark = [pytest.mark.django_db(transaction=True), needs_root, needs_cgroup_v1]

# Each sleep escapes its leader differently: a new session, a double fork into a new session that
# ignores SIGTERM (so only the kill after the grace period ends it).
ESCAPES = "setsid sleep 301 & (setsid sh -c 'trap \"\" TERM; exec sleep 302' &); exec sleep 300"


def live_processes(uid: int) -> list[psutil.Process]:
    return [proc for proc in psutil.process_iter(["uids", "status", "cmdline"])
            if proc.info["uids"].real == uid and proc.info["status"] != psutil.STATUS_ZOMBIE]


def started_escapes(agent, workload_id) -> tuple[int, list[psutil.Process]]:
    agent.start(workload_id)
    uid = agent.handles[workload_id].handle.identity.uid
    escaped = wait_for(lambda: [p for p in live_processes(uid) if p.info["cmdline"][-1] in {"301", "302"}]
                       if len(live_processes(uid)) == 3 else None, message="the escaping children")
    leader = agent.handles[workload_id].handle.pid
    assert all(os.getsid(proc.pid) != leader for proc in escaped)  # out of its session and group
    return uid, escaped


def test_setsid_and_double_forked_children_are_gone_after_stop(user_api, make_site_agent):
    agent = make_site_agent(stop_grace_seconds=1)
    workload = submit(user_api, agent.config.node_id, "sh", "-c", ESCAPES)
    uid, escaped = started_escapes(agent, workload["id"])
    assert user_api.post(f"/api/workloads/{workload['id']}/stop").status_code in (200, 202)
    agent.heartbeat_once()  # its answer says "stop"
    row = supervise_until(agent, lambda: (row := workload_row(workload["id"])).status == "stopped" and row,
                          timeout=15, message="stopped")

    assert "SIGTERM" in row.reason or "SIGKILL" in row.reason
    assert not live_processes(uid)
    assert not any(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE for proc in escaped)
    agent.shutdown()


def test_deleting_a_running_workload_ends_all_its_processes(user_api, make_site_agent):
    agent = make_site_agent(stop_grace_seconds=1)
    workload = submit(user_api, agent.config.node_id, "sh", "-c", ESCAPES)
    uid, _ = started_escapes(agent, workload["id"])
    assert user_api.delete(f"/api/workloads/{workload['id']}").status_code in (200, 202, 204)

    def ended():
        agent.heartbeat_once()
        agent.supervise_once()
        return not live_processes(uid)

    wait_for(ended, timeout=15, message="every process of the deleted workload ended")
    agent.shutdown()


def test_a_restarted_agent_ends_what_a_workload_left_when_its_leader_died(user_api, make_site_agent):
    agent = make_site_agent()
    workload = submit(user_api, agent.config.node_id, "sh", "-c", ESCAPES)
    uid, escaped = started_escapes(agent, workload["id"])
    leader = agent.handles[workload["id"]].handle
    # The agent dies, and its workload's leader with it; the escaped children live on.
    leader.popen.kill()
    leader.popen.wait()
    agent.handles.clear()
    assert len(live_processes(uid)) == 2

    restarted = make_site_agent(config=agent.config)
    restarted.register()
    restarted.reconcile()

    assert workload_row(workload["id"]).status == "lost"
    assert not live_processes(uid)
    assert not restarted.context.leases("uids").held_by(workload["id"])
    restarted.shutdown()


def test_where_cgroups_do_not_hold_it_whole_its_uid_is_swept_when_the_leader_exits(user_api, make_site_agent):
    """cgroup v1 holds a workload from before its exec, so its cgroups end all of it; elsewhere (v2
    moves it in after the spawn; no cgroups at all) what forked outside them dies by its uid."""
    agent = make_site_agent()
    workload = submit(user_api, agent.config.node_id, "sh", "-c", ESCAPES)
    uid, escaped = started_escapes(agent, workload["id"])
    handle = agent.handles[workload["id"]].handle
    for proc in escaped:  # out of its cgroups, as a fork before a v2 move would be
        for controller in ("pids", "freezer", "memory", "cpu"):
            if (CGROUP_ROOT / controller / "cgroup.procs").exists():
                (CGROUP_ROOT / controller / "cgroup.procs").write_text(str(proc.pid))
    handle.limiter = CgroupLimiter(group=agent.context.limiter.group)  # holds nothing whole
    handle.popen.kill()

    supervise_until(agent, lambda: workload_row(workload["id"]).status in ("failed", "lost"), timeout=15,
                    message="its exit reported")
    assert not live_processes(uid)
    agent.shutdown()


@pytest.mark.parametrize("asked", [{"requirements": {"pids": 16}}, {"pids": 16}],
                         ids=["requirements.pids", "config.pids"])
def test_a_fork_bomb_stays_inside_its_pids_limit_and_ends_whole(user_api, make_site_agent, asked):
    agent = make_site_agent(stop_grace_seconds=1)
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 60"
    workload = submit(user_api, agent.config.node_id, "sh", "-c", bomb, **asked)
    agent.start(workload["id"])
    handle = agent.handles[workload["id"]].handle
    pids_cgroup = next(Path(path) for path in handle.runtime()["cgroups"] if "/pids/" in path)
    assert (pids_cgroup / "pids.max").read_text().strip() == "16"
    wait_for(lambda: int((pids_cgroup / "pids.events").read_text().split()[1]) > 0,
             message="the bomb reached its limit")  # forks refused: "max N"
    assert int((pids_cgroup / "pids.current").read_text()) <= 16
    assert len(live_processes(handle.identity.uid)) <= 16

    assert user_api.post(f"/api/workloads/{workload['id']}/stop").status_code in (200, 202)
    agent.heartbeat_once()
    supervise_until(agent, lambda: workload_row(workload["id"]).status == "stopped", timeout=15,
                    message="stopped")
    assert not live_processes(handle.identity.uid)
    assert not pids_cgroup.exists()
    agent.shutdown()
