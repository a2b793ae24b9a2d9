"""The control loops on the database alone, with the clock moved instead of waited for."""

from datetime import UTC, datetime

import pytest
import time_machine

from nodes.liveness import node_heartbeat
from nodes.models import Node
from nodes.resources import Resources
from tests.helpers import GiB, make_node
from workloads import control
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_submit, workload_transition

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
S = WorkloadStatus
TICK = 2.0


@pytest.fixture(autouse=True)
def loop_settings(settings):
    settings.CNET_HEARTBEAT_SECONDS = 5.0
    settings.CNET_UNHEALTHY_AFTER_BEATS = 3
    settings.CNET_OFFLINE_AFTER_SECONDS = 18.0
    settings.CNET_REDISPATCH_AFTER_SECONDS = 30.0
    settings.CNET_CONTROL_TICK_SECONDS = TICK
    settings.CNET_MAX_HEARTBEATS_PER_SECOND = 250.0
    return settings


def submit_on(node_id: str, **extra) -> Workload:
    return workload_submit(owner=None, name=f"on-{node_id}", type="process", config={"command": "sleep"},
                           requirements=Resources(cpu=1000, memory=GiB), node=node_id, **extra)


def run_loop(clock, seconds: float, *, beating=()) -> int:
    """The liveness loop for ``seconds``, a pass every tick, the ``beating`` nodes beating before
    each; how much work its passes found lost."""
    lost = 0
    for _ in range(round(seconds / TICK)):
        clock.shift(TICK)
        for node_id in beating:
            node_heartbeat(node_id=node_id, usage={})
        lost += control.mark_lost_on_offline_nodes()
    return lost


def reload(workload: Workload) -> Workload:
    return Workload.objects.select_related("node").get(pk=workload.pk)


@pytest.mark.django_db
def test_work_on_a_node_that_went_offline_is_lost_with_its_reason_and_its_resources_released():
    with time_machine.travel(START, tick=False) as clock:
        make_node("doomed")
        make_node("alive")
        running = submit_on("doomed")
        workload_transition(workload_id=running.pk, to=S.RUNNING)
        scheduled = submit_on("doomed")
        healthy = submit_on("alive")
        assert control.mark_lost_on_offline_nodes() == 0  # the loop's first pass

        assert run_loop(clock, 10, beating=["alive"]) == 0  # silent 10 s: not offline yet
        assert run_loop(clock, 10, beating=["alive"]) == 2  # past its 18 s deadline, on the pass at 20 s
        for workload in (running, scheduled):
            lost = reload(workload)
            assert lost.status == S.LOST
            assert lost.reason == "node doomed went offline (no heartbeat for 18s)"
        assert reload(healthy).status == S.SCHEDULED
        assert Node.objects.get(node_id="doomed").allocated()["cpu"] == 0
        assert Node.objects.get(node_id="alive").allocated()["cpu"] == 1000
        assert control.mark_lost_on_offline_nodes() == 0  # a second pass loses nothing twice


@pytest.mark.django_db
def test_lost_work_with_a_restart_policy_goes_back_to_the_queue_and_onto_a_live_node():
    with time_machine.travel(START, tick=False) as clock:
        make_node("doomed")
        make_node("alive", parent="doomed")
        workload = submit_on("doomed", restart_policy="on-failure")
        control.mark_lost_on_offline_nodes()
        run_loop(clock, 20, beating=["alive"])
        moved = reload(workload)
        assert (moved.status, moved.node.node_id, moved.restart_count) == (S.SCHEDULED, "alive", 1)


@pytest.mark.django_db
def test_a_control_plane_down_for_a_minute_loses_no_work_when_it_comes_back():
    with time_machine.travel(START, tick=False) as clock:
        make_node("a")
        make_node("b")
        on_a, on_b = submit_on("a"), submit_on("b")
        workload_transition(workload_id=on_a.pk, to=S.RUNNING)
        control.mark_lost_on_offline_nodes()
        run_loop(clock, 4, beating=["a", "b"])

        clock.shift(60)  # no pass, no beat: every deadline passed while the control plane was down
        assert control.mark_lost_on_offline_nodes() == 0
        assert (reload(on_a).status, reload(on_b).status) == (S.RUNNING, S.SCHEDULED)
        assert set(Node.objects.values_list("status", flat=True)) == {"ready"}

        # a comes back; b never does, and loses its work on the deadline it was given on return
        assert run_loop(clock, 18, beating=["a"]) == 0
        assert run_loop(clock, 2, beating=["a"]) == 1
        assert (reload(on_a).status, reload(on_b).status) == (S.RUNNING, S.LOST)


@pytest.mark.django_db
def test_a_start_nobody_acknowledged_is_sent_again_once_per_interval_and_only_to_a_ready_node():
    with time_machine.travel(START, tick=False) as clock:
        make_node("quiet")
        make_node("offline")
        waiting = submit_on("quiet")
        stranded = submit_on("offline")
        Node.objects.filter(node_id="offline").update(status="offline")

        clock.shift(29)
        assert control.redispatch_unacknowledged() == 0  # the first doorbell may still be in flight

        clock.shift(2)
        assert control.redispatch_unacknowledged() == 1
        assert reload(waiting).dispatched_at == START.replace(second=31)
        assert reload(stranded).dispatched_at is None

        clock.shift(29)
        assert control.redispatch_unacknowledged() == 0  # counted from the last ring, not the first
        clock.shift(2)
        assert control.redispatch_unacknowledged() == 1

        workload_transition(workload_id=waiting.pk, to=S.RUNNING)
        clock.shift(31)
        assert control.redispatch_unacknowledged() == 0  # the agent picked it up
