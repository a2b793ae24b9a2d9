"""Issue 4 on a real cluster: four agents, a control worker and beat, Postgres and Redis.

Capacities (conftest.AGENTS): parent 1 cpu / 512 MiB, child 2 cpu / 1 GiB, peer1 and peer2
3 cpu / 1 GiB. The parent is the child's parent and peers with both peers.
"""

import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import redis
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from nodes.models import Node, NodeStatus
from nodes.services import join_token_create
from tests.helpers import free_port, kill_group, node_status, wait_for, wait_status, workload_row
from workloads.dispatch import dispatch_start, node_queue
from workloads.models import Workload, WorkloadEvent, WorkloadStatus
from workloads.tasks import start_workload as start_workload_task

from .conftest import REPO, UNREACHABLE_DATABASE, MiB

S = WorkloadStatus
PY = sys.executable


def submit(api, *, name: str, command: str = "sleep", args=("60",), cpu: float = 0.5, memory: int = 64 * MiB,
           node: str = "parent", **extra) -> str:
    body = {"name": name, "type": "process", "node": node, "requirements": {"cpu": cpu, "memory": memory},
            "config": {"command": command, "args": list(args)}, **extra}
    response = api.post("/api/workloads", body, format="json")
    assert response.status_code == 201, response.data
    return response.data["id"]


def script(code: str) -> dict:
    return {"command": PY, "args": ["-u", "-c", code]}


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def logs(api, workload_id) -> list[str]:
    response = api.get(f"/api/workloads/{workload_id}/logs")
    assert response.status_code == 200, response.data
    return response.data["lines"]


# --- placement across the tree and the peers -------------------------------------------------
def test_placement_spills_to_child_then_peer_then_waits_for_room(api, cluster):
    on_child = submit(api, name="needs-1.5", cpu=1.5)
    assert wait_status(on_child, S.RUNNING).node.node_id == "child"  # parent has 1 cpu

    first_peer = wait_status(submit(api, name="needs-2.5-a", cpu=2.5), S.RUNNING)
    assert first_peer.node.node_id in {"peer1", "peer2"}  # too big for parent (1) and child (2)
    second_peer = wait_status(submit(api, name="needs-2.5-b", cpu=2.5), S.RUNNING)
    assert {first_peer.node.node_id, second_peer.node.node_id} == {"peer1", "peer2"}

    waiting = submit(api, name="needs-2.5-c", cpu=2.5)
    workload = workload_row(waiting)
    assert workload.status == S.PENDING and workload.node is None
    for node_id in ("parent", "child", "peer1", "peer2"):
        assert f"{node_id}: " in workload.reason, workload.reason  # one reason per node

    assert api.post(f"/api/workloads/{first_peer.pk}/stop").status_code in (200, 202)
    wait_status(first_peer.pk, S.STOPPED)
    assert wait_status(waiting, S.RUNNING).node.node_id == first_peer.node.node_id


# --- logs survive their node -----------------------------------------------------------------
def test_logs_of_a_finished_workload_are_readable_after_its_agent_is_killed(api, cluster):
    code = "import sys\nfor i in range(3): print(f'line-{i}')\nprint('oops', file=sys.stderr)"
    workload_id = submit(api, name="printer", cpu=1.5, **{"config": script(code)})
    workload = wait_status(workload_id, S.SUCCEEDED, S.FAILED)
    assert (workload.status, workload.exit_code, workload.node.node_id) == (S.SUCCEEDED, 0, "child")
    cluster.kill("child")
    lines = logs(api, workload_id)
    assert sorted(lines) == ["line-0", "line-1", "line-2", "oops"]


# --- a dead agent, and its return ------------------------------------------------------------
def test_killed_agent_loses_its_work_which_restarts_elsewhere_and_survivors_die_on_return(api, cluster):
    plain = submit(api, name="plain", cpu=0.4, memory=600 * MiB)  # too much memory for the parent
    retried = submit(api, name="retried", cpu=1.5, restart_policy="on-failure")
    old_pids = {}
    for workload_id in (plain, retried):
        workload = wait_status(workload_id, S.RUNNING)
        assert workload.node.node_id == "child"
        old_pids[workload_id] = workload.runtime["pid"]

    cluster.kill("child")
    wait_for(lambda: node_status("child") == NodeStatus.UNHEALTHY, timeout=10, message="child unhealthy")
    lost = wait_status(plain, S.LOST)
    assert "node child went offline" in lost.reason
    # on-failure: lost on the child, placed again (on a peer: too big for the parent).
    moved = wait_for(lambda: (w := workload_row(retried)).status == S.RUNNING and w.node.node_id != "child" and w,
                     timeout=20, message="retried runs elsewhere")
    assert moved.restart_count == 1 and moved.node.node_id in {"peer1", "peer2"}
    assert all(pid_alive(pid) for pid in old_pids.values())  # kill -9 of the agent spares its work

    cluster.start_agent("child")
    wait_for(lambda: not any(pid_alive(pid) for pid in old_pids.values()), timeout=15,
             message="the returning agent killed its stale copies")
    copies = cluster.workload_processes(retried)
    assert [proc.pid for proc in copies] == [moved.runtime["pid"]]  # one copy, the new one
    assert workload_row(plain).status == S.LOST


def test_node_that_returns_after_its_work_was_declared_lost_kills_it(api, cluster):
    workload_id = submit(api, name="partitioned", cpu=1.5)
    pid = wait_status(workload_id, S.RUNNING).runtime["pid"]
    cluster.signal("child", signal.SIGSTOP)  # a partition: the agent is alive but silent
    try:
        lost = wait_status(workload_id, S.LOST, timeout=20)
        assert "went offline" in lost.reason and pid_alive(pid)
    finally:
        cluster.signal("child", signal.SIGCONT)
    wait_for(lambda: not pid_alive(pid), timeout=10, message="the returning agent killed its lost work")
    wait_for(lambda: node_status("child") == NodeStatus.READY, timeout=10, message="child rejoined")
    assert workload_row(workload_id).status == S.LOST


def test_restarted_agent_readopts_a_workload_that_survived_and_records_its_exit(api, cluster):
    release = cluster.data_dir / "release-readopt"
    code = (f"import os, time\nprint('started')\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)\n"
            "print('finished')")
    workload_id = submit(api, name="survivor", node="peer2", **{"config": script(code)})
    workload = wait_status(workload_id, S.RUNNING)
    wait_for(lambda: "started" in logs(api, workload_id), timeout=10, message="first output shipped")
    cluster.kill("peer2")
    assert pid_alive(workload.runtime["pid"])
    cluster.start_agent("peer2")
    wait_for(lambda: WorkloadEvent.objects.filter(workload_id=workload_id, reason__contains="re-adopted").exists(),
             timeout=10, message="re-adopted")
    assert workload_row(workload_id).status == S.RUNNING
    release.touch()
    ended = wait_status(workload_id, S.SUCCEEDED, S.FAILED)
    # Its parent died, so the exit code is known only if it could still be read; either way
    # the end is recorded with a reason, and output is shipped once (resumed, not re-read).
    assert ended.exit_code == 0 if ended.status == S.SUCCEEDED else "exit code unknown" in ended.reason
    assert logs(api, workload_id) == ["started", "finished"]


# --- limits ----------------------------------------------------------------------------------
def test_process_over_its_memory_requirement_fails_with_memory_limit_exceeded(api, cluster):
    code = "import time\nheap = []\nwhile True:\n    heap.append(bytearray(8 << 20)); time.sleep(0.01)"
    workload_id = submit(api, name="hog", node="peer1", memory=64 * MiB, **{"config": script(code)})
    ended = wait_status(workload_id, S.FAILED, S.SUCCEEDED, timeout=30)
    assert (ended.status, ended.reason) == (S.FAILED, "memory limit exceeded")


def test_cpu_requirement_becomes_the_cfs_quota_of_its_cgroup(api, cluster):
    workload_id = submit(api, name="quota", node="peer1", cpu=0.5)
    # The limits are stored once they are in place, a moment after the start is recorded.
    workload = wait_for(lambda: (w := workload_row(workload_id)).runtime.get("limits") and w, timeout=10,
                        message="limits")
    if workload.runtime.get("limits") not in {"cgroup1", "cgroup2"}:
        pytest.skip(f"no writable cgroup on this machine (limits: {workload.runtime.get('limits')})")
    cpu_groups = [Path(p) for p in workload.runtime["cgroups"]
                  if (Path(p) / "cpu.cfs_quota_us").exists() or (Path(p) / "cpu.max").exists()]
    assert cpu_groups, workload.runtime
    group = cpu_groups[0]
    if (group / "cpu.cfs_quota_us").exists():
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (group / "cpu.cfs_period_us").read_text().strip() == "100000"
    else:
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
    assert str(workload.runtime["pid"]) in (group / "cgroup.procs").read_text().split()


# --- stop and delete -------------------------------------------------------------------------
def test_stop_sends_sigterm_then_sigkill_after_the_grace_period(api, cluster):
    code = "import signal, time\nsignal.signal(signal.SIGTERM, lambda *_: print('ignoring TERM'))\n" \
           "print('ready')\nwhile True: time.sleep(0.05)"
    workload_id = submit(api, name="stubborn", **{"config": script(code)})
    wait_status(workload_id, S.RUNNING)
    wait_for(lambda: "ready" in logs(api, workload_id), timeout=10, message="handler installed")
    asked = time.monotonic()
    assert api.post(f"/api/workloads/{workload_id}/stop").status_code in (200, 202)
    ended = wait_status(workload_id, S.STOPPED, timeout=15)
    assert time.monotonic() - asked >= float(cluster.env["CNET_STOP_GRACE_SECONDS"])
    assert "SIGKILL" in ended.reason
    assert "ignoring TERM" in logs(api, workload_id)  # it did get the SIGTERM first


def test_stop_of_a_polite_process_ends_on_sigterm(api, cluster):
    code = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: (print('bye'), sys.exit(0)))\n" \
           "print('ready')\nwhile True: time.sleep(0.05)"
    workload_id = submit(api, name="polite", **{"config": script(code)})
    wait_for(lambda: "ready" in logs(api, workload_id), timeout=15, message="handler installed")
    api.post(f"/api/workloads/{workload_id}/stop")
    ended = wait_status(workload_id, S.STOPPED, timeout=5)  # well inside the grace period
    assert "SIGKILL" not in ended.reason and logs(api, workload_id)[-1] == "bye"


def test_delete_of_a_running_workload_stops_its_process(api, cluster):
    workload = wait_status(submit(api, name="doomed"), S.RUNNING)
    assert api.delete(f"/api/workloads/{workload.pk}").status_code == 204
    wait_for(lambda: not pid_alive(workload.runtime["pid"]), timeout=10, message="process gone")
    assert not Workload.objects.filter(pk=workload.pk).exists()
    assert not cluster.workload_processes(workload.pk)


# --- the broker is a doorbell ----------------------------------------------------------------
def _starts_consumed(node_id: str, workload_id) -> bool:
    """No message about this workload waits in the node's queue or is delivered but unacked
    (kombu keeps those in the "unacked" hash; task headers carry the args in plain text)."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    messages = broker.lrange(node_queue(node_id), 0, -1) + broker.hvals("unacked")
    return not any(str(workload_id).encode() in message for message in messages)


def test_a_redelivered_start_never_runs_a_workload_twice(api, cluster):
    marker = cluster.data_dir / "starts-once.txt"
    code = f"open({str(marker)!r}, 'a').write('started\\n')\nimport time\nwhile True: time.sleep(1)"
    workload_id = submit(api, name="once", node="peer1", **{"config": script(code)})
    for _ in range(2):  # the doorbell rings again, twice each way
        start_workload_task.apply_async(args=[workload_id], queue=node_queue("peer1"))
        dispatch_start(workload_id=workload_id, node_id="peer1")
    wait_status(workload_id, S.RUNNING)
    wait_for(lambda: marker.exists() and _starts_consumed("peer1", workload_id), timeout=10,
             message="all starts consumed")
    assert marker.read_text() == "started\n"
    assert len(cluster.workload_processes(workload_id)) == 1
    api.post(f"/api/workloads/{workload_id}/stop")
    wait_status(workload_id, S.STOPPED)
    start_workload_task.apply_async(args=[workload_id], queue=node_queue("peer1"))  # after the end
    wait_for(lambda: _starts_consumed("peer1", workload_id), timeout=10, message="late start consumed")
    assert marker.read_text() == "started\n" and not cluster.workload_processes(workload_id)


def test_scheduled_work_whose_start_message_was_lost_starts_on_the_next_heartbeat(api, cluster):
    with transaction.atomic():
        workload_id = submit(api, name="lost-doorbell")
        # The broker loses the start message: drop the publish queued for the commit.
        connections["default"].run_on_commit.clear()
    workload = workload_row(workload_id)
    assert workload.status == S.SCHEDULED and workload.dispatched_at is None
    started = wait_status(workload_id, S.RUNNING, timeout=20)
    # No doorbell rang, not even the control loop's second one: the agent asked for its work
    # with a heartbeat (it asks on every one), so a lost message costs at most one interval.
    assert started.dispatched_at is None


# --- SIGTERM to the agent --------------------------------------------------------------------
def test_sigterm_with_policy_stop_ends_work_and_takes_the_node_offline(api, cluster):
    code = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n" \
           "while True: time.sleep(0.05)"
    workload_id = submit(api, name="ended-by-shutdown", node="peer2", **{"config": script(code)})
    wait_status(workload_id, S.RUNNING)
    cluster.signal("peer2", signal.SIGTERM)
    assert cluster.procs["peer2"].wait(timeout=20) == 0
    ended = workload_row(workload_id)
    assert ended.status == S.STOPPED and node_status("peer2") == NodeStatus.OFFLINE
    assert WorkloadEvent.objects.filter(workload_id=workload_id, reason__contains="shutting down (stop)").exists()


def test_sigterm_with_policy_requeue_hands_work_back_to_run_elsewhere(api, cluster):
    cluster.signal("peer2", signal.SIGTERM)
    cluster.procs["peer2"].wait(timeout=20)
    cluster.start_agent("peer2", "--shutdown-policy", "requeue")
    workload = wait_status(submit(api, name="handed-back", node="peer2", cpu=2.5), S.RUNNING)
    assert workload.node.node_id == "peer2"
    cluster.signal("peer2", signal.SIGINT)
    assert cluster.procs["peer2"].wait(timeout=20) == 0
    assert node_status("peer2") == NodeStatus.OFFLINE
    # Back to pending, then placed on the only other node with 2.5 cpu free.
    moved = wait_for(lambda: (w := workload_row(workload.pk)).status == S.RUNNING and w.node.node_id == "peer1" and w,
                     timeout=20, message="requeued onto peer1")
    assert moved.runtime["pid"] != workload.runtime["pid"] and not pid_alive(workload.runtime["pid"])
    assert WorkloadEvent.objects.filter(workload_id=workload.pk, reason__contains="handed back").exists()


def test_sigterm_right_after_a_delete_still_takes_the_node_offline(api, cluster):
    workload = wait_status(submit(api, name="deleted-then-shutdown", node="peer2"), S.RUNNING)
    assert api.delete(f"/api/workloads/{workload.pk}").status_code == 204
    cluster.signal("peer2", signal.SIGTERM)  # the agent may still hold the deleted workload
    assert cluster.procs["peer2"].wait(timeout=20) == 0
    assert node_status("peer2") == NodeStatus.OFFLINE and not pid_alive(workload.runtime["pid"])


# --- an agent whose clock is a minute off ---------------------------------------------------
@pytest.mark.parametrize("offset", [60, -60], ids=["ahead", "behind"])
def test_agent_with_a_clock_a_minute_off_stays_ready_and_still_goes_offline_on_time(cluster, offset):
    """Heartbeat times, liveness and deadlines are the control plane's: an agent's own clock
    can be a minute off either way without the node looking dead (behind) or immortal (ahead)."""
    node_id = f"skew-{'ahead' if offset > 0 else 'behind'}"
    cluster._spawn(node_id, [sys.executable, str(REPO / "tests" / "e2e" / "skewed_agent.py"), str(offset),
                             "--node-id", node_id, "--address", "127.0.0.1", "--port", str(free_port()),
                             "--cpu", "0.5", "--memory", str(256 * MiB), "--server", cluster.server,
                             "--join-token", join_token_create(ttl_seconds=600, uses=1)],
                   DATABASE_URL=UNREACHABLE_DATABASE)
    try:
        wait_for(lambda: Node.objects.filter(node_id=node_id, status=NodeStatus.READY).exists(), timeout=30,
                 message=f"{node_id} ready")
        offline_after = float(cluster.env["CNET_OFFLINE_AFTER_SECONDS"])
        watch_until = time.monotonic() + 2 * offline_after  # long enough to be declared dead twice over
        while time.monotonic() < watch_until:
            assert node_status(node_id) == NodeStatus.READY, f"{node_id} left ready with a healthy agent"
            time.sleep(0.2)  # sampling the status over a window, not waiting for an event

        deadline = Node.objects.get(node_id=node_id).offline_at
        cluster.kill(node_id)
        killed_at = timezone.now()
        assert deadline - killed_at <= timedelta(seconds=offline_after), "its deadline is the control plane's"
        tick = float(cluster.env["CNET_CONTROL_TICK_SECONDS"])
        wait_for(lambda: node_status(node_id) == NodeStatus.OFFLINE,
                 timeout=(deadline - killed_at).total_seconds() + 3 * tick + 2, message=f"{node_id} offline on time")
    finally:
        kill_group(cluster.procs[node_id])
        Node.objects.filter(node_id=node_id).delete()
