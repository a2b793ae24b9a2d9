"""Heartbeat: one write, the control plane's clock, what to kill and what to start; work: reads only."""

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
import time_machine
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.dateparse import parse_datetime

from nodes.heartbeats import live_node_count, live_node_count_forget
from nodes.models import Node, NodeCredential, NodeStatus
from nodes.services import join_token_create, node_credential_revoke, node_join, node_set_schedulable
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_requeue, workload_stop

from .conftest import node_client, report_item, submit

pytestmark = pytest.mark.django_db
S = WorkloadStatus
SERVER_NOW = datetime(2031, 5, 4, 12, 0, tzinfo=UTC)


def beat(agent, *, running=(), epoch=None, **extra):
    body = {"epoch": epoch or Node.objects.get(pk=agent.node.pk).agent_epoch, "usage": {"cpu_percent": 12.5},
            "running": [str(pk) for pk in running]} | extra
    return agent.post("/api/node/heartbeat", body, format="json")


def writes(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].lstrip().split(" ", 1)[0].upper() in ("UPDATE", "INSERT", "DELETE")]


def test_a_heartbeat_answers_with_the_control_planes_time_and_records_usage(agent_for):
    agent = agent_for("a")
    with time_machine.travel(SERVER_NOW, tick=False):
        answer = beat(agent)
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["status"] == NodeStatus.READY
    assert body["heartbeat_seconds"] == settings.CNET_HEARTBEAT_SECONDS
    assert body["offline_after_seconds"] == settings.CNET_OFFLINE_AFTER_SECONDS
    assert parse_datetime(body["server_time"]) == SERVER_NOW
    node = Node.objects.get(node_id="a")
    assert node.last_heartbeat == SERVER_NOW and node.usage == {"cpu_percent": 12.5}


def test_the_agents_clock_plays_no_part_it_sends_no_time(agent_for):
    agent = agent_for("a")
    refused = beat(agent, sent_at=(SERVER_NOW - timedelta(hours=3)).isoformat())
    assert refused.status_code == 400 and "sent_at" in refused.json()
    with time_machine.travel(SERVER_NOW, tick=False):
        assert beat(agent).status_code == 200
    assert Node.objects.get(node_id="a").last_heartbeat == SERVER_NOW


def test_a_beat_tells_how_long_its_previous_beat_waited_for_its_answer_both_ways(agent_for):
    """The quick way (a plain beat) and DRF's way (a running id as a number) record it alike; bad
    values are refused naming the field, and nothing is written."""
    agent = agent_for("a")
    work = submit("a")
    assert beat(agent, previous_answer_seconds=0.25).status_code == 200
    assert Node.objects.get(node_id="a").beat_rtt_seconds == 0.25
    epoch = Node.objects.get(node_id="a").agent_epoch
    full = agent.post("/api/node/heartbeat", {"epoch": epoch, "running": [work.pk.int], "previous_answer_seconds": 3},
                      format="json")
    assert full.status_code == 200, full.content
    assert Node.objects.get(node_id="a").beat_rtt_seconds == 3.0
    assert beat(agent, previous_answer_seconds=None).status_code == 200
    assert Node.objects.get(node_id="a").beat_rtt_seconds is None
    for bad in (-1, 7200, "slow", [1]):
        refused = beat(agent, previous_answer_seconds=bad)
        assert refused.status_code == 400 and "previous_answer_seconds" in refused.json(), (bad, refused.content)
    assert Node.objects.get(node_id="a").beat_rtt_seconds is None


def test_a_heartbeat_costs_one_write(agent_for):
    agent = agent_for("a")
    work = submit("a")
    beat(agent)  # the credential's node is looked up once per process: not on this beat
    epoch = Node.objects.get(node_id="a").agent_epoch
    live_node_count_forget()
    live_node_count()  # the fleet is counted at most every few seconds per process: not on this beat
    with CaptureQueriesContext(connection) as queries:
        answer = beat(agent, running=[work.pk], epoch=epoch)
    assert answer.status_code == 200
    assert len(writes(queries)) == 1, writes(queries)
    # the beat (which re-checks the credential and returns the status), the work placed here;
    # nothing to start, so no read of its details or log numbers
    assert len(queries) == 2, [q["sql"][:90] for q in queries]


def test_the_answer_is_the_timing_the_beat_wrote_and_it_stretches_with_the_fleet(agent_for, settings):
    settings.CNET_MAX_HEARTBEATS_PER_SECOND = 100.0
    agent = agent_for("a")
    Node.objects.bulk_create(Node(node_id=f"bulk-{i}") for i in range(2_999))
    live_node_count_forget()
    try:
        with time_machine.travel(SERVER_NOW, tick=False):
            body = beat(agent).json()
    finally:
        live_node_count_forget()
    # 3,000 nodes at 100/s: every 30 s, and offline after the default 10 s grace past that
    assert (body["heartbeat_seconds"], body["offline_after_seconds"]) == (30.0, 40.0)
    node = Node.objects.get(node_id="a")
    assert node.offline_at == SERVER_NOW + timedelta(seconds=body["offline_after_seconds"])


def test_registering_answers_with_the_timing_it_wrote(agent_for):
    agent = agent_for("a")
    with time_machine.travel(SERVER_NOW, tick=False):
        answer = agent.post("/api/node/register", {"node_id": "a", "capacity": {"cpu": 1, "memory": 1024**3}},
                            format="json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    node = Node.objects.get(node_id="a")
    assert node.offline_at == SERVER_NOW + timedelta(seconds=body["offline_after_seconds"])
    assert body["heartbeat_seconds"] == settings.CNET_HEARTBEAT_SECONDS


def test_an_unhealthy_node_is_ready_again_on_its_beat_and_an_offline_one_stays_offline(agent_for):
    agent = agent_for("a")
    Node.objects.filter(node_id="a").update(status=NodeStatus.UNHEALTHY)
    assert beat(agent).json()["status"] == NodeStatus.READY
    Node.objects.filter(node_id="a").update(status=NodeStatus.OFFLINE)
    assert beat(agent).json()["status"] == NodeStatus.OFFLINE
    assert Node.objects.get(node_id="a").status == NodeStatus.OFFLINE


def test_a_stale_epoch_is_told_to_register_again_and_writes_nothing(agent_for):
    agent = agent_for("a")
    before = Node.objects.get(node_id="a")
    answer = beat(agent, epoch=before.agent_epoch + 5)
    assert answer.status_code == 409 and "register again" in answer.json()["detail"]
    after = Node.objects.get(node_id="a")
    assert (after.last_heartbeat, after.usage) == (before.last_heartbeat, before.usage)


def test_a_credential_revoked_after_its_node_beat_is_refused_on_the_next_beat(agent_for):
    """The heartbeat looks its credential's node up once per process; the write re-checks it."""
    agent = agent_for("a")
    assert beat(agent).status_code == 200  # the lookup is kept from here on
    node_credential_revoke(node_id="a")
    before = Node.objects.get(node_id="a")
    refused = beat(agent, epoch=before.agent_epoch)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    after = Node.objects.get(node_id="a")
    assert (after.status, after.last_heartbeat, after.usage) == (NodeStatus.OFFLINE, before.last_heartbeat,
                                                                  before.usage)
    # it joins again with a new credential: the old one stays refused, the new one beats
    fresh = node_client(node_join(token=join_token_create(), node_id="a"))
    fresh.node = agent.node
    assert beat(agent, epoch=before.agent_epoch).status_code == 401
    assert beat(fresh, epoch=before.agent_epoch).status_code == 200


def test_a_plain_beat_is_answered_as_the_full_way_answers_it(agent_for):
    """A plain beat skips DRF's request handling; a beat naming a workload by its number takes
    DRF's way (its UUID field takes numbers). Both answer the same."""
    agent = agent_for("a")
    started, to_start, elsewhere = submit("a", name="started"), submit("a", name="to-start"), uuid4()
    epoch = Node.objects.get(node_id="a").agent_epoch
    agent.post("/api/node/reports", {"reports": [report_item(started, "running", epoch=epoch)]}, format="json")
    workload_stop(workload=Workload.objects.get(pk=started.pk))
    with time_machine.travel(SERVER_NOW, tick=False):
        plain = beat(agent, running=[started.pk, elsewhere])
        full = agent.post("/api/node/heartbeat", {"epoch": epoch, "usage": {"cpu_percent": 12.5},
                                                  "running": [started.pk.int, elsewhere.int]}, format="json")
    assert plain.status_code == full.status_code == 200
    assert plain.json() == full.json()
    assert (plain.json()["kill"], plain.json()["stop"]) == ([str(elsewhere)], [str(started.pk)])
    assert [item["id"] for item in plain.json()["work"]] == [str(to_start.pk)]


def test_a_beat_writes_nothing_to_its_credential(agent_for):
    agent = agent_for("a")
    assert beat(agent).status_code == 200
    assert NodeCredential.objects.get(node__node_id="a").last_used_at is None


def test_the_answer_lists_scheduled_work_not_yet_running_and_kills_what_moved_elsewhere(agent_for):
    agent = agent_for("a")
    agent_for("b", parent="a")
    moving, staying = submit("a", name="moving"), submit("a", name="staying")
    assert {w["id"] for w in beat(agent).json()["work"]} == {str(moving.pk), str(staying.pk)}

    # a is drained and moving is handed back to the queue: it is placed on a's child b.
    node_set_schedulable(node_id="a", schedulable=False)
    workload_requeue(workload_id=moving.pk, reason="test: node a drained")
    moving.refresh_from_db()
    assert moving.status == S.SCHEDULED and moving.node.node_id == "b"

    body = beat(agent, running=[moving.pk, staying.pk]).json()
    assert body["kill"] == [str(moving.pk)] and body["work"] == [] and body["stop"] == []


def test_a_stop_request_on_running_work_is_in_the_answer(agent_for):
    agent = agent_for("a")
    work = submit("a")
    epoch = Node.objects.get(node_id="a").agent_epoch
    agent.post("/api/node/reports", {"reports": [report_item(work, "running", epoch=epoch)]}, format="json")
    work.refresh_from_db()
    workload_stop(workload=work)
    assert beat(agent, running=[work.pk]).json()["stop"] == [str(work.pk)]


def test_work_lists_start_details_and_is_idempotent(agent_for):
    agent = agent_for("a")
    work = submit("a", restart_policy="on-failure", priority=5)
    agent.get("/api/node/work")  # the credential's last use is written at most once a minute
    with CaptureQueriesContext(connection) as queries:
        first = agent.get("/api/node/work")
    second = agent.get("/api/node/work")
    assert first.status_code == 200 and writes(queries) == []
    assert first.json() == second.json()
    (item,) = first.json()["work"]
    assert first.json()["running"] == []
    assert item["id"] == str(work.pk) and item["type"] == "process" and item["name"] == "w"
    assert item["config"]["command"] == "sleep" and item["config"]["args"] == ["60"]
    assert item["requirements"] == {"cpu_millicores": 1000, "gpu_count": 0, "memory_bytes": 1024**3,
                                    "storage_bytes": 0}
    assert item["restart_policy"] == "on-failure" and item["priority"] == 5 and item["status"] == "scheduled"
