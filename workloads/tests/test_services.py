"""The workload lifecycle: one state machine, release exactly once, pending placement."""

import threading

import pytest
from django.db import connection

from core.errors import InvalidRequest, StateConflict
from nodes.models import Node
from tests.helpers import GiB, make_node, submit_process
from workloads.models import EventKind, Workload, WorkloadEvent, WorkloadLog, WorkloadStatus
from workloads.selectors import workload_log_tail
from workloads.services import (
    ALLOWED,
    workload_delete,
    workload_logs_append,
    workload_mark_redispatched,
    workload_request_stop,
    workload_stop,
    workload_transition,
    workloads_place_pending,
)

S = WorkloadStatus
def node_allocated(node_id="local") -> dict:
    return Node.objects.get(node_id=node_id).allocated()


def transitions(workload) -> list[tuple[str, str]]:
    return list(
        WorkloadEvent.objects.filter(workload=workload, kind=EventKind.TRANSITION)
        .order_by("id").values_list("from_status", "to_status")
    )


@pytest.mark.django_db
def test_submit_places_on_the_local_node_and_records_submission_and_placement():
    make_node("local")
    workload = submit_process()
    assert workload.status == S.SCHEDULED and workload.node.node_id == "local"
    assert transitions(workload) == [("", "pending"), ("pending", "scheduled")]
    placement = WorkloadEvent.objects.get(workload=workload, kind=EventKind.PLACEMENT)
    assert placement.node_id == "local" and placement.details[-1]["fits"] is True
    assert node_allocated()["cpu"] == 1000 and node_allocated()["memory"] == GiB


@pytest.mark.django_db
def test_a_transition_given_a_stale_copy_does_not_move_and_a_fresh_one_is_kept_current():
    make_node("local")
    stale = Workload.objects.select_related("node").get(pk=submit_process().pk)
    fresh = Workload.objects.select_related("node").get(pk=stale.pk)
    assert workload_transition(workload=fresh, to=S.RUNNING, reason="started")
    assert fresh.status == S.RUNNING and fresh.started_at is not None and fresh.reason == "started"
    assert not workload_transition(workload=stale, to=S.FAILED, reason="from a stale copy")
    assert not workload_transition(workload=stale, to=S.RUNNING, reason="twice")
    stored = Workload.objects.get(pk=stale.pk)
    assert stored.status == S.RUNNING and stored.reason == "started"
    assert transitions(stored)[-1] == ("scheduled", "running") and len(transitions(stored)) == 3


@pytest.mark.django_db
@pytest.mark.parametrize("start, to", [
    (S.PENDING, S.RUNNING), (S.PENDING, S.SUCCEEDED), (S.SCHEDULED, S.SUCCEEDED),
    (S.STOPPED, S.RUNNING), (S.STOPPED, S.PENDING), (S.SUCCEEDED, S.RUNNING), (S.RUNNING, S.SCHEDULED),
])
def test_disallowed_moves_are_refused_and_change_nothing(start, to):
    assert to not in ALLOWED[start]
    make_node("local")
    workload = submit_process()
    Workload.objects.filter(pk=workload.pk).update(status=start)
    events = WorkloadEvent.objects.count()
    allocated = node_allocated()
    assert workload_transition(workload_id=workload.pk, to=to, reason="test") is False
    assert Workload.objects.get(pk=workload.pk).status == start
    assert WorkloadEvent.objects.count() == events
    assert node_allocated() == allocated


@pytest.mark.django_db
def test_every_transition_records_an_event_with_from_to_and_reason():
    make_node("local")
    workload = submit_process()
    assert workload_transition(workload_id=workload.pk, to=S.RUNNING, reason="agent started it")
    assert workload_transition(workload_id=workload.pk, to=S.SUCCEEDED, reason="exit 0", exit_code=0)
    assert transitions(workload) == [("", "pending"), ("pending", "scheduled"), ("scheduled", "running"),
                                     ("running", "succeeded")]
    last = WorkloadEvent.objects.filter(workload=workload, kind=EventKind.TRANSITION).last()
    assert last.reason == "exit 0" and last.node_id == "local"
    workload.refresh_from_db()
    assert workload.exit_code == 0 and workload.finished_at is not None and workload.started_at is not None


@pytest.mark.django_db
def test_a_transition_stores_the_report_it_names_and_leaves_the_rest():
    make_node("local")
    workload = submit_process()
    assert workload_transition(workload_id=workload.pk, to=S.RUNNING, runtime={"pid": 7}, agent_epoch=3)
    assert workload_transition(workload_id=workload.pk, to=S.SUCCEEDED, exit_code=0)  # no runtime news: kept
    workload.refresh_from_db()
    assert (workload.runtime, workload.agent_epoch, workload.exit_code) == ({"pid": 7}, 3, 0)


@pytest.mark.django_db
def test_a_stop_requested_twice_keeps_the_time_of_the_first_request():
    make_node("local")
    workload = submit_process()
    workload_transition(workload_id=workload.pk, to=S.RUNNING)
    workload_request_stop(workload_id=workload.pk)
    first = Workload.objects.get(pk=workload.pk).stop_requested_at
    workload_request_stop(workload_id=workload.pk)
    assert first is not None and Workload.objects.get(pk=workload.pk).stop_requested_at == first


@pytest.mark.django_db
def test_a_redispatch_is_noted_only_while_the_workload_waits_to_start():
    make_node("local")
    workload = submit_process()
    workload_mark_redispatched(workload_id=workload.pk)
    rung = Workload.objects.get(pk=workload.pk).dispatched_at
    workload_transition(workload_id=workload.pk, to=S.RUNNING)
    workload_mark_redispatched(workload_id=workload.pk)  # a late ring: the agent has it already
    assert rung is not None and Workload.objects.get(pk=workload.pk).dispatched_at == rung


@pytest.mark.django_db
def test_reaching_a_terminal_state_releases_resources_exactly_once():
    make_node("local")
    workload = submit_process(cpu=2, memory=3 * GiB)
    assert node_allocated()["cpu"] == 2000
    workload_transition(workload_id=workload.pk, to=S.RUNNING)
    assert workload_transition(workload_id=workload.pk, to=S.FAILED, reason="exit 1")
    assert node_allocated() == {"cpu": 0, "gpu": 0, "memory": 0, "storage": 0}
    # Every later attempt to end it again is refused and releases nothing more.
    for to in (S.FAILED, S.STOPPED, S.LOST, S.SUCCEEDED):
        assert workload_transition(workload_id=workload.pk, to=to) is False
    assert node_allocated() == {"cpu": 0, "gpu": 0, "memory": 0, "storage": 0}


def _race_to(workload_id, to, barrier, results) -> None:
    try:
        barrier.wait()
        results[to] = workload_transition(workload_id=workload_id, to=to, reason=f"race to {to}")
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_of_two_racing_transitions_exactly_one_wins_and_release_happens_once():
    make_node("local", cpu=4)
    other = submit_process(cpu=1, name="bystander")  # keeps something allocated so a double release would show
    for round_ in range(10):
        workload = submit_process(cpu=2, name=f"racer-{round_}")
        workload_transition(workload_id=workload.pk, to=S.RUNNING)
        barrier = threading.Barrier(2)
        results = {}
        threads = [threading.Thread(target=_race_to, args=(workload.pk, to, barrier, results))
                   for to in (S.SUCCEEDED, S.STOPPED)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results.values()) == [False, True]
        winner = next(to for to, won in results.items() if won)
        assert Workload.objects.get(pk=workload.pk).status == winner
        assert transitions(workload)[-1] == ("running", winner)
        assert len(transitions(workload)) == 4
        assert node_allocated()["cpu"] == other.cpu_millicores


@pytest.mark.django_db
def test_a_workload_that_fits_nowhere_now_stays_pending_with_a_reason_per_node():
    make_node("local", cpu=2, memory=2 * GiB)
    make_node("child-1", parent="local", cpu=2, memory=2 * GiB)
    submit_process(memory=GiB + GiB // 2, name="filler-local")
    submit_process(memory=GiB + GiB // 2, name="filler-child")
    waiting = submit_process(memory=GiB)
    assert waiting.status == S.PENDING and waiting.node is None
    assert "local: needs 1.0 GiB memory, 512.0 MiB free" in waiting.reason
    assert "child-1: needs 1.0 GiB memory, 512.0 MiB free" in waiting.reason
    placement = WorkloadEvent.objects.get(workload=waiting, kind=EventKind.PLACEMENT)
    assert {d["node"] for d in placement.details} == {"local", "child-1"}


@pytest.mark.django_db
def test_pending_work_is_placed_when_resources_are_released_highest_priority_first_then_oldest():
    make_node("local", cpu=2)
    filler = submit_process(cpu=2, name="filler")
    old_low = submit_process(cpu=2, name="old-low", priority=0)
    old_high = submit_process(cpu=2, name="old-high", priority=5)
    new_high = submit_process(cpu=2, name="new-high", priority=5)
    assert {w.status for w in (old_low, old_high, new_high)} == {S.PENDING}

    def status(w):
        return Workload.objects.get(pk=w.pk).status

    assert workloads_place_pending() == 0
    workload_stop(workload=filler)
    assert workloads_place_pending() == 1
    assert (status(old_high), status(new_high), status(old_low)) == (S.SCHEDULED, S.PENDING, S.PENDING)
    workload_stop(workload=Workload.objects.get(pk=old_high.pk))
    assert workloads_place_pending() == 1
    assert (status(new_high), status(old_low)) == (S.SCHEDULED, S.PENDING)
    workload_stop(workload=Workload.objects.get(pk=new_high.pk))
    assert workloads_place_pending() == 1
    assert status(old_low) == S.SCHEDULED
    assert node_allocated()["cpu"] == 2000


@pytest.mark.django_db
def test_per_submission_strategy_overrides_the_settings_default(settings):
    make_node("local", cpu=16, memory=64 * GiB)
    make_node("snug", parent="local", cpu=1, memory=GiB)
    assert submit_process().node.node_id == "local"
    best = submit_process(strategy="best_fit")
    assert best.node.node_id == "snug" and best.strategy == "best_fit"
    settings.CNET_DEFAULT_STRATEGY = "best_fit"
    make_node("snug-2", parent="local", cpu=1, memory=GiB)
    by_default = submit_process()
    assert by_default.strategy == "best_fit" and by_default.node.node_id == "snug-2"


@pytest.mark.django_db
def test_submit_refuses_unknown_strategy_and_node_and_writes_nothing():
    make_node("local")
    with pytest.raises(InvalidRequest) as caught:
        submit_process(strategy="nope")
    assert caught.value.field == "strategy"
    with pytest.raises(InvalidRequest) as caught:
        submit_process(node="ghost")
    assert caught.value.field == "node" and "ghost" in str(caught.value)
    assert Workload.objects.count() == 0 and WorkloadEvent.objects.count() == 0


@pytest.mark.django_db
def test_a_request_no_node_could_ever_hold_is_refused_naming_the_largest_node():
    make_node("local", cpu=4, memory=8 * GiB)
    make_node("big", cpu=8, memory=32 * GiB)
    with pytest.raises(InvalidRequest) as caught:
        submit_process(memory=64 * GiB)
    assert caught.value.field == "requirements"
    assert "big" in str(caught.value) and "64.0 GiB" in str(caught.value)
    assert Workload.objects.count() == 0 and WorkloadEvent.objects.count() == 0


@pytest.mark.django_db
def test_stop_a_pending_or_scheduled_workload_ends_it_and_releases_once():
    make_node("local", cpu=1)
    scheduled = submit_process(cpu=1)
    pending = submit_process(cpu=1)
    assert workload_stop(workload=pending).status == S.STOPPED
    assert workload_stop(workload=scheduled).status == S.STOPPED
    assert node_allocated()["cpu"] == 0
    with pytest.raises(StateConflict):
        workload_stop(workload=scheduled)
    assert node_allocated()["cpu"] == 0


@pytest.mark.django_db
def test_stop_a_running_workload_asks_its_agent_and_keeps_resources_until_it_exits():
    make_node("local", cpu=1)
    workload = submit_process(cpu=1)
    workload_transition(workload_id=workload.pk, to=S.RUNNING)
    stopped = workload_stop(workload=Workload.objects.get(pk=workload.pk))
    assert stopped.status == S.RUNNING and stopped.stop_requested_at is not None
    assert node_allocated()["cpu"] == 1000


@pytest.mark.django_db
def test_delete_of_a_live_workload_releases_its_resources():
    make_node("local", cpu=1)
    workload = submit_process(cpu=1)
    workload_delete(workload=workload)
    assert not Workload.objects.filter(pk=workload.pk).exists()
    assert node_allocated()["cpu"] == 0


@pytest.mark.django_db
def test_log_chunks_are_stored_once_and_read_back_as_a_tail():
    make_node("local")
    workload = submit_process()
    workload_logs_append(workload_id=workload.pk, chunks=[(0, "stdout", "line 1\nline 2\n"), (1, "stderr", "line 3\n")])
    workload_logs_append(workload_id=workload.pk, chunks=[(1, "stderr", "line 3\n"), (2, "stdout", "line 4\n")])
    assert WorkloadLog.objects.filter(workload=workload).count() == 3
    assert workload_log_tail(workload=workload, lines=None) == ["line 1", "line 2", "line 3", "line 4"]
    assert workload_log_tail(workload=workload, lines=3) == ["line 2", "line 3", "line 4"]
    assert workload_log_tail(workload=workload, lines=0) == []


@pytest.mark.django_db
def test_a_workload_asked_to_stop_is_not_restarted_when_its_node_is_lost():
    make_node("local")
    workload = submit_process(restart_policy="always")
    workload_transition(workload_id=workload.pk, to=S.RUNNING)
    workload_stop(workload=Workload.objects.get(pk=workload.pk))  # its agent never answers
    assert workload_transition(workload_id=workload.pk, to=S.LOST, reason="node went offline")
    workload.refresh_from_db()
    assert workload.status == S.LOST and workload.restart_count == 0


@pytest.mark.django_db
def test_handing_work_back_does_not_use_up_its_restarts():
    from workloads.services import workload_requeue

    make_node("local")
    workload = submit_process(restart_policy="on-failure", max_restarts=0)
    assert workload_requeue(workload_id=workload.pk, reason="agent shut down")
    workload.refresh_from_db()
    assert workload.restart_count == 0 and workload.status == S.SCHEDULED  # placed again at once
    notes = WorkloadEvent.objects.filter(workload=workload, reason__startswith="not restarted")
    assert not notes.exists()


@pytest.mark.django_db
def test_a_backlog_of_big_requests_does_not_hide_a_small_one_that_fits():
    make_node("local", cpu=4, memory=8 * GiB)
    submit_process(cpu=3, name="a")
    b = submit_process(cpu=1, name="b")  # the node is full now
    bigs = [submit_process(cpu=2, name=f"big-{n}", priority=10) for n in range(3)]
    small = submit_process(cpu=0.5, name="small")
    assert all(w.status == S.PENDING for w in [*bigs, small])
    workload_stop(workload=b)  # 1 CPU free: room for the small one only
    assert workloads_place_pending(limit=1) == 1  # its one try is not spent on a big one
    assert Workload.objects.get(pk=small.pk).status == S.SCHEDULED
