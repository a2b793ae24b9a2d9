"""Issue 8 on real hosts: a control plane and three agents in network namespaces (conftest.py),
each failure ending with nothing lost and nothing run twice.

The proof a workload gives of where and when it ran is a file every host can see: the writer
appends "<node> <time>" to it every 0.2 s (and prints a numbered line, shipped as its log).
"""

import signal
import sys
import time

import psutil
from django.db import connection

from nodes.models import Node, NodeStatus
from tests.helpers import node_status, wait_for, wait_status, workload_row
from workloads.models import WorkloadEvent, WorkloadStatus

from .conftest import AGENTS, MEASURED, PORTS, MiB

S = WorkloadStatus
WRITER = """\
import os, sys, time
path, node, i = sys.argv[1], os.environ["CNET_NODE_ID"], 0
while True:
    with open(path, "a") as proof:
        proof.write(f"{node} {time.time():.3f}\\n")
    print(f"tick {i}", flush=True)
    i += 1
    time.sleep(0.2)
"""
COUNTER = """\
import sys, time
for i in range(int(sys.argv[1])):
    print(f"line {i}", flush=True)
    time.sleep(0.2)
"""


def submit(cluster, *, name: str, code: str, args=(), cpu: float = 0.25, node: str = "h8-parent", **extra) -> str:
    body = {"name": name, "type": "process", "node": node, "requirements": {"cpu": cpu, "memory": 64 * MiB},
            "config": {"command": sys.executable, "args": ["-u", "-c", code, *map(str, args)]}, **extra}
    status, data = cluster.api.post("/api/workloads", body)
    assert status == 201, data
    return data["id"]


def proof_lines(path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        node, _, stamp = line.partition(" ")
        if stamp:
            lines.append((node, float(stamp)))
    return lines


def largest_gap(lines: list[tuple[str, float]], start: float, end: float) -> float:
    stamps = [stamp for _node, stamp in lines if start <= stamp <= end]
    return max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=float("inf"))


def logs(cluster, workload_id) -> list[str]:
    status, data = cluster.api.get(f"/api/workloads/{workload_id}/logs")
    assert status == 200, data
    return data["lines"]


def transitions(workload_id) -> list[tuple[str, str, str, str]]:
    return list(WorkloadEvent.objects.filter(workload_id=workload_id, kind="transition").order_by("id")
                .values_list("from_status", "to_status", "node_id", "reason"))


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- the cluster itself -----------------------------------------------------------------------
def test_agent_hosts_reach_only_the_control_planes_http_port_and_the_broker(cluster):
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT host(client_addr) FROM pg_stat_activity WHERE datname = %s "
                       "AND client_addr IS NOT NULL", ["cnet_h8"])
        db_clients = {addr for (addr,) in cursor.fetchall()}
    assert db_clients == {"127.0.0.1"}, "only the control-plane host's own processes use the database"
    for host in AGENTS:
        assert cluster.connects(host, cluster.lab.address("cp"), PORTS["web"])
        assert cluster.connects(host, cluster.lab.address("cp"), PORTS["redis"])
        assert not cluster.connects(host, cluster.lab.address("cp"), PORTS["postgres"])
        assert not cluster.connects(host, "127.0.0.1", PORTS["postgres"])
    agents = {cluster.lab.address(host) for host in AGENTS}
    import redis

    broker = redis.Redis(unix_socket_path=str(cluster.lab.root / "redis.sock"))
    broker_clients = {client["addr"].rsplit(":", 1)[0] for client in broker.client_list()}
    assert agents | {cluster.lab.address("cp")} <= broker_clients

    on_child = submit(cluster, name="spills-to-child", code=COUNTER, args=[3], cpu=1.5)
    workload = wait_status(on_child, S.SUCCEEDED, S.FAILED)
    assert (workload.status, workload.node.node_id) == (S.SUCCEEDED, "h8-child"), list(
        WorkloadEvent.objects.filter(workload_id=on_child, kind="placement").values_list("reason", "details"))
    assert logs(cluster, on_child) == ["line 0", "line 1", "line 2"]


# --- a host cut off ---------------------------------------------------------------------------
def test_cut_off_host_is_replaced_elsewhere_and_never_runs_alongside_its_replacement(cluster):
    proof = cluster.shared / "cut.txt"
    workload_id = submit(cluster, name="cut", code=WRITER, args=[proof], cpu=1.5, restart_policy="on-failure")
    first = wait_status(workload_id, S.RUNNING, node="h8-child")
    old_pid = first.runtime["pid"]
    wait_for(lambda: len(proof_lines(proof)) >= 3, timeout=10, message="the writer writes")
    epoch = Node.objects.get(node_id="h8-child").agent_epoch

    cut_at = time.time()
    cluster.lab.set_link("child", False)
    seen: dict[str, float] = {}

    def offline():
        seen.setdefault(node_status("h8-child"), time.time())
        return NodeStatus.OFFLINE in seen

    wait_for(offline, timeout=30, message="h8-child offline")
    assert NodeStatus.UNHEALTHY in seen and seen[NodeStatus.UNHEALTHY] < seen[NodeStatus.OFFLINE], seen
    replacement = wait_status(workload_id, S.RUNNING, node="h8-peer", timeout=30)
    new_first = wait_for(lambda: next((stamp for node, stamp in proof_lines(proof) if node == "h8-peer"), None),
                         timeout=10, message="the replacement writes")
    moves = transitions(workload_id)
    lost = [reason for _from, to, node, reason in moves if to == S.LOST and node == "h8-child"]
    assert lost and "offline" in lost[0], moves
    assert replacement.restart_count == 1 and replacement.runtime["pid"] != old_pid

    # The partition outlasts the replacement's start a while; then the link comes back: the old
    # host's copy is gone and its node rejoins by itself.
    wait_for(lambda: len([1 for node, _stamp in proof_lines(proof) if node == "h8-peer"]) >= 10, timeout=10,
             message="the replacement keeps writing")
    cluster.lab.set_link("child", True)
    restored_at = time.time()
    wait_for(lambda: Node.objects.filter(node_id="h8-child", status=NodeStatus.READY, agent_epoch__gt=epoch
                                         ).exists(), timeout=60, message="h8-child rejoined")
    rejoined_at = time.time()
    wait_for(lambda: not pid_alive(old_pid), timeout=10, message="the stale copy ended")
    assert cluster.lab.alive("child"), "the agent itself survived the cut"
    assert "self-fencing" in cluster.lab.log("child"), "the cut-off agent killed its copy itself"
    assert list(cluster.workload_pids(workload_id).values()) == ["peer"]

    # The proof: after the replacement's first line, the old host wrote nothing.
    lines = proof_lines(proof)
    old_last = max(stamp for node, stamp in lines if node == "h8-child")
    assert old_last < new_first, f"two copies ran at once: h8-child wrote at {old_last}, h8-peer from {new_first}"
    assert workload_row(workload_id).status == S.RUNNING and workload_row(workload_id).restart_count == 1
    MEASURED.append(
        f"cut -> replacement running: {new_first - cut_at:.1f}s (unhealthy after {seen['unhealthy'] - cut_at:.1f}s, "
        f"offline after {seen['offline'] - cut_at:.1f}s; old copy's last line {old_last - cut_at:.1f}s after "
        f"the cut, {new_first - old_last:.1f}s before the replacement's first; rejoined "
        f"{rejoined_at - restored_at:.1f}s after the link came back)")


# --- the broker stopped for 15 s ----------------------------------------------------------------
def test_broker_outage_only_slows_starts_to_the_next_heartbeat_and_leaves_running_work_alone(cluster):
    """The broker only rings doorbells: agents also ask for their work and their stops on every
    heartbeat, over HTTP, so with the broker down work is accepted, started, stopped and
    recorded, each at most one heartbeat later than with it."""
    proof = cluster.shared / "broker.txt"
    steady = submit(cluster, name="steady", code=WRITER, args=[proof], cpu=0.5)
    pid = wait_status(steady, S.RUNNING).runtime["pid"]
    wait_for(lambda: len(proof_lines(proof)) >= 3, timeout=10, message="the writer writes")
    logs_before = len(logs(cluster, steady))

    stopped_at = time.time()
    cluster.stop_redis()
    during, post_seconds = [], []
    for i in range(2):
        started = time.monotonic()
        during.append(submit(cluster, name=f"during-{i}", code=COUNTER, args=[2]))
        post_seconds.append(time.monotonic() - started)
    ran_after = []
    for workload_id in during:
        workload = wait_status(workload_id, S.SUCCEEDED, S.FAILED, timeout=30)
        assert workload.status == S.SUCCEEDED and workload.exit_code == 0, workload.reason
        ran_after.append(workload.started_at.timestamp() - stopped_at)
        assert logs(cluster, workload_id) == ["line 0", "line 1"]
        assert [to for _from, to, _node, _why in transitions(workload_id)].count(S.RUNNING) == 1
    time.sleep(max(0.0, stopped_at + 15 - time.time()))  # the outage itself, not synchronisation
    assert not cluster.lab.alive("redis")
    assert pid_alive(pid) and workload_row(steady).status == S.RUNNING
    assert len(logs(cluster, steady)) > logs_before + 30, "logs kept reaching the database"
    # A stop asked during the outage reaches its agent with the next heartbeat's answer.
    status, _data = cluster.api.post(f"/api/workloads/{steady}/stop")
    assert status in (200, 202)
    wait_status(steady, S.STOPPED, timeout=30)
    assert not pid_alive(pid)
    stopped = time.time()
    assert largest_gap(proof_lines(proof), stopped_at, stopped - 2) < 1.0
    cluster.lab.restart("redis")
    cluster.wait_redis()

    # With the broker back, doorbells ring again: the next submission runs as usual.
    after = submit(cluster, name="after", code=COUNTER, args=[1])
    assert wait_status(after, S.SUCCEEDED, S.FAILED, timeout=30).status == S.SUCCEEDED
    MEASURED.append(
        f"broker stopped {stopped - stopped_at:.0f}s: {len(during)} submissions during the outage answered 201 in "
        f"{max(post_seconds):.2f}s at most and started {min(ran_after):.1f}-{max(ran_after):.1f}s after it began "
        f"(by heartbeat); running work's output never paused; a stop during it took effect")


# --- the control plane killed and restarted --------------------------------------------------
def test_control_plane_killed_mid_flight_work_goes_on_and_is_recorded(cluster):
    proof = cluster.shared / "control-plane.txt"
    steady = submit(cluster, name="steady", code=WRITER, args=[proof], cpu=0.5)
    job = submit(cluster, name="job", code=COUNTER, args=[25], cpu=1.5)  # ~5 s, on h8-child
    steady_pid = wait_status(steady, S.RUNNING).runtime["pid"]
    job_pid = wait_status(job, S.RUNNING, node="h8-child").runtime["pid"]

    killed_at = time.time()
    cluster.kill_control_plane()
    wait_for(lambda: not pid_alive(job_pid), timeout=30, message="the job finished with the control plane down")
    wait_for(lambda: len([1 for _n, stamp in proof_lines(proof) if stamp > killed_at]) >= 10, timeout=10,
             message="the writer keeps writing")
    cluster.restart_control_plane()
    back_at = time.time()

    # Its exit and output waited in its agent's spool and arrive now, once.
    finished = wait_status(job, S.SUCCEEDED, S.FAILED, timeout=30)
    assert (finished.status, finished.exit_code) == (S.SUCCEEDED, 0), finished.reason
    assert logs(cluster, job) == [f"line {i}" for i in range(25)]
    assert workload_row(steady).status == S.RUNNING and workload_row(steady).runtime["pid"] == steady_pid
    assert largest_gap(proof_lines(proof), killed_at, back_at) < 1.0
    # Its first ticks after the restart declare nobody offline: agents kept heartbeating.
    after = submit(cluster, name="after", code=COUNTER, args=[1])
    assert wait_status(after, S.SUCCEEDED, S.FAILED).status == S.SUCCEEDED
    assert Node.objects.filter(status=NodeStatus.READY).count() == len(AGENTS)
    assert not WorkloadEvent.objects.filter(workload_id__in=[steady, job, after], to_status=S.LOST).exists()
    MEASURED.append(f"control plane (web, control worker, beat) kill -9'd for {back_at - killed_at:.1f}s: "
                    f"a job ended meanwhile and its exit and {len(logs(cluster, job))} log lines were all there; "
                    f"running work's output never paused")


def test_control_plane_down_for_a_minute_fences_only_replaceable_work_and_never_runs_two_copies(cluster):
    """60 s without a control plane: past its fence time each agent kills the local copies of work
    that would be replaced elsewhere (on-failure), keeps the rest (never, and an on-failure one
    that chose ``on_disconnect: keep``) running and spooling, and once the control plane is back
    the never-workload's output and exit arrive once, in order, the on-failure one runs again,
    and the kept one runs on as its only copy, with no moment of two copies."""
    proof, kept_proof = cluster.shared / "outage.txt", cluster.shared / "outage-kept.txt"
    keep = submit(cluster, name="keeps-running", code=COUNTER, args=[200], cpu=0.5, restart_policy="never")
    fenced = submit(cluster, name="fenced", code=WRITER, args=[proof], cpu=1.5, restart_policy="on-failure")
    kept = submit(cluster, name="kept", code=WRITER, args=[kept_proof], cpu=0.25, restart_policy="on-failure",
                  on_disconnect="keep")
    keep_pid = wait_status(keep, S.RUNNING).runtime["pid"]
    fenced_pid = wait_status(fenced, S.RUNNING).runtime["pid"]
    kept_pid = wait_status(kept, S.RUNNING).runtime["pid"]
    wait_for(lambda: len(proof_lines(proof)) >= 3 and proof_lines(kept_proof), timeout=10,
             message="the writers write")

    killed_at = time.time()
    cluster.kill_control_plane()
    wait_for(lambda: not pid_alive(fenced_pid), timeout=60, message="its agent fenced the on-failure copy")
    fenced_at = time.time()
    assert pid_alive(keep_pid), "restart_policy never: kept running through the outage"
    assert pid_alive(kept_pid), "on_disconnect keep: not fenced"
    # It prints for 40 s: it goes on past the fence time and exits while the control plane is down.
    wait_for(lambda: not pid_alive(keep_pid), timeout=60, message="the never-workload ended")
    time.sleep(max(0.0, killed_at + 60 - time.time()))  # the outage itself, not synchronisation
    cluster.restart_control_plane()
    back_at = time.time()

    # Nothing was marked lost for the outage itself: every node got a fresh deadline.
    wait_for(lambda: Node.objects.filter(status=NodeStatus.READY).count() == len(AGENTS), timeout=30,
             message="all nodes ready after the outage")
    rerun = wait_for(lambda: (row := workload_row(fenced)).status == S.RUNNING and row.restart_count == 1 and row,
                     timeout=60, message="the fenced workload runs again")
    new_first = wait_for(lambda: next((stamp for _node, stamp in proof_lines(proof) if stamp > back_at), None),
                         timeout=20, message="the rerun writes")
    old_last = max(stamp for _node, stamp in proof_lines(proof) if stamp < back_at)
    assert old_last < fenced_at <= back_at < new_first, ("two copies ran at once", [
        line for line in proof_lines(proof) if line[1] > fenced_at - 1][:5], transitions(fenced))
    lost = [reason for _from, to, _node, reason in transitions(fenced) if to == S.LOST]
    assert len(lost) == 1 and "self-fencing" in lost[0], transitions(fenced)
    assert rerun.runtime["pid"] != fenced_pid

    # The kept one ran through the outage and is still its only copy, never lost nor restarted.
    assert pid_alive(kept_pid) and list(cluster.workload_pids(kept)) == [kept_pid]
    assert len({node for node, _stamp in proof_lines(kept_proof)}) == 1
    assert largest_gap(proof_lines(kept_proof), killed_at, time.time()) < 5, "it wrote through the outage"
    row = workload_row(kept)
    assert (row.status, row.restart_count, row.runtime["pid"]) == (S.RUNNING, 0, kept_pid), row.reason
    assert S.LOST not in [to for _from, to, _node, _why in transitions(kept)]

    done = wait_status(keep, S.SUCCEEDED, S.FAILED, timeout=60)
    assert (done.status, done.exit_code, done.restart_count) == (S.SUCCEEDED, 0, 0), done.reason
    assert logs(cluster, keep) == [f"line {i}" for i in range(200)], "every line once, in order"
    assert [to for _from, to, _node, _why in transitions(keep)] == [S.PENDING, S.SCHEDULED, S.RUNNING, S.SUCCEEDED]
    MEASURED.append(f"control plane down {back_at - killed_at:.0f}s: the on-failure copy was fenced "
                    f"{fenced_at - killed_at:.1f}s in and ran again {new_first - back_at:.1f}s after the return "
                    f"({new_first - old_last:.1f}s after its last line); the never-workload ran on and its "
                    f"200 lines and exit arrived once")


# --- an agent killed and restarted -----------------------------------------------------------
def test_agent_killed_and_restarted_readopts_its_work_across_the_network(cluster):
    proof = cluster.shared / "agent.txt"
    workload_id = submit(cluster, name="adopted", code=WRITER, args=[proof], cpu=1.5, restart_policy="on-failure")
    pid = wait_status(workload_id, S.RUNNING, node="h8-child").runtime["pid"]
    wait_for(lambda: len(logs(cluster, workload_id)) >= 3, timeout=10, message="logs shipped")
    epoch = Node.objects.get(node_id="h8-child").agent_epoch

    killed_at = time.time()
    cluster.lab.kill("child", signal.SIGKILL)
    assert pid_alive(pid), "the workload outlives its agent"
    cluster.start_agent("child")
    cluster.wait_registered("child", after_epoch=epoch)
    wait_for(lambda: WorkloadEvent.objects.filter(workload_id=workload_id, reason__startswith="re-adopted").exists(),
             timeout=30, message="re-adopted")
    readopted_at = time.time()

    workload = workload_row(workload_id)
    assert (workload.status, workload.node.node_id, workload.runtime["pid"]) == (S.RUNNING, "h8-child", pid)
    shipped = len(logs(cluster, workload_id))
    wait_for(lambda: len(logs(cluster, workload_id)) >= shipped + 5, timeout=10, message="log shipping resumed")
    status, _data = cluster.api.post(f"/api/workloads/{workload_id}/stop")
    assert status in (200, 202)
    wait_status(workload_id, S.STOPPED, timeout=30)
    assert not pid_alive(pid)
    lines = logs(cluster, workload_id)
    assert lines == [f"tick {i}" for i in range(len(lines))], "every line once, in order, none missing"
    assert {node for node, _stamp in proof_lines(proof)} == {"h8-child"}
    assert [to for _from, to, _node, _why in transitions(workload_id)] == [S.PENDING, S.SCHEDULED, S.RUNNING,
                                                                          S.STOPPED]
    MEASURED.append(f"agent kill -9'd and restarted: its workload re-adopted {readopted_at - killed_at:.1f}s after "
                    f"the kill, {len(lines)} log lines each exactly once")
