"""Issue 15, point 3: ``yes`` for 20 s, through the real in-process agent and the node API, grows
the database by a bounded amount; its node stays ready and work submitted meanwhile starts on time.

Slow by nature (20 s of flood): ``-m "not slow"`` leaves it out. The agent reads 256 KiB chunks,
skips a backlog past the tail it would keep and frees the blocks it has read, so the node's log
file stays bounded on disk too."""

import threading
import time
import uuid

import pytest
from django.db import connection

from nodes.liveness import nodes_check_liveness
from nodes.models import NodeStatus
from tests.helpers import in_process_agents, node_status, wait_for, wait_status
from workloads.executors.process import log_path
from workloads.logs import workload_log_read
from workloads.models import WorkloadLogUsage, WorkloadStatus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]
S = WorkloadStatus
MiB = 1024 * 1024
FLOOD_SECONDS = 20
SUPERVISE_SECONDS = 0.25  # runagent's pause between passes


def database_bytes() -> int:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_database_size(current_database())")
            return cursor.fetchone()[0]
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute("PRAGMA freelist_count")  # free pages are reused before the file grows
        pages -= cursor.fetchone()[0]
        cursor.execute("PRAGMA page_size")
        return pages * cursor.fetchone()[0]


def run_like_runagent(agent, *, until: float, beats: list[float]) -> None:
    """runagent's main loop: a heartbeat when one is due, a supervision pass, a short pause."""
    next_beat = 0.0
    while time.monotonic() < until:
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + agent.heartbeat_seconds
            agent.heartbeat_once()
            beats.append(time.monotonic())
        agent.supervise_once()
        time.sleep(SUPERVISE_SECONDS)


def submit(api, node_id: str, name: str, command: str, *args: str) -> str:
    answer = api.post("/api/workloads", {"name": name, "type": "process", "node": node_id,
                                         "requirements": {"cpu": 0.5, "memory": 64 * MiB},
                                         "config": {"command": command, "args": list(args)}}, format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()["id"]


def test_yes_for_20s_grows_the_database_by_a_bounded_amount_and_the_node_keeps_working(
        live_server, user_api, settings):
    settings.CNET_LOG_MAX_BYTES = 2 * MiB
    node_id = f"flood-{uuid.uuid4().hex[:6]}"
    with in_process_agents(live_server.url) as make:
        agent = make(node_id, cpu=2)
        agent.register()
        before = database_bytes()
        flood = submit(user_api, node_id, "flood", "yes")
        agent.start(flood)  # the doorbell
        wait_status(flood, S.RUNNING, timeout=10)
        started = time.monotonic()
        beats: list[float] = []

        # Halfway through, a second workload, rung for as the doorbell consumer thread would.
        def submit_meanwhile(result: dict) -> None:
            wait_for(lambda: time.monotonic() - started > FLOOD_SECONDS / 2, timeout=FLOOD_SECONDS)
            submitted = time.monotonic()
            result["id"] = submit(user_api, node_id, "meanwhile", "sleep", "30")
            agent.start(result["id"])
            wait_status(result["id"], S.RUNNING, timeout=30)
            result["seconds"] = time.monotonic() - submitted

        meanwhile: dict = {}
        doorbell = threading.Thread(target=submit_meanwhile, args=(meanwhile,), daemon=True)
        doorbell.start()
        try:
            run_like_runagent(agent, until=started + FLOOD_SECONDS, beats=beats)
            doorbell.join(timeout=30)
            # On the node's disk too, what was read (or skipped) is given back: the file holds what the
            # writer added since the last pass, not the whole flood.
            written = log_path(agent.context.log_dir, flood, "stdout").stat()
            on_disk = written.st_blocks * 512
            assert on_disk < written.st_size / 10, f"{on_disk / MiB:.0f} of {written.st_size / MiB:.0f} MiB kept"
            assert user_api.post(f"/api/workloads/{flood}/stop").status_code == 200
            run_like_runagent(agent, until=time.monotonic() + 3, beats=beats)
            wait_status(flood, S.STOPPED, timeout=15)
            assert not log_path(agent.context.log_dir, flood, "stdout").exists(), "removed once delivered"
        finally:
            for supervised in list(agent.handles.values()):
                supervised.handle.kill()
            for stream in ("stdout", "stderr"):
                log_path(agent.context.log_dir, flood, stream).unlink(missing_ok=True)

        grown = database_bytes() - before
        usage = WorkloadLogUsage.objects.get(workload_id=flood)
        print(f"flood: database grew {grown / MiB:.1f} MiB; {usage.dropped_bytes / MiB:.1f} MiB of output "
              f"dropped; the node's file {on_disk / MiB:.0f} MiB on disk of {written.st_size / MiB:.0f} MiB written; "
              f"the second workload ran after {meanwhile.get('seconds')} s; beats {len(beats)}")
        assert usage.head_bytes + usage.tail_bytes <= settings.CNET_LOG_MAX_BYTES and usage.dropped_bytes > 0
        # The log itself, the event rows, indexes and pages left free by deleted tail chunks.
        assert grown < 4 * settings.CNET_LOG_MAX_BYTES, f"the database grew by {grown / MiB:.1f} MiB"
        read = workload_log_read(workload=usage.workload, lines=None)
        assert read.dropped_bytes == usage.dropped_bytes and read.lines[0] == "y"

        # The node stayed ready: it beat on time all along.
        gaps = [later - earlier for earlier, later in zip(beats, beats[1:], strict=False)]
        assert max(gaps) < 2 * agent.heartbeat_seconds, gaps
        nodes_check_liveness(failover_after_seconds=3600)
        assert node_status(node_id) == NodeStatus.READY
        # Work submitted meanwhile started on time (a doorbell and one start; well under a beat).
        assert meanwhile.get("seconds") is not None and meanwhile["seconds"] < 5, meanwhile
