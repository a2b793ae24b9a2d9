"""Writes on workloads: place (one or an array's batch), the one state machine, what an end
settles for its dependents, stop, delete, logs."""

import logging
import time
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from core.db import atomic_retried
from core.errors import StateConflict
from core.instruments import observe_placement
from nodes.models import Node, NodeStatus
from nodes.resources import Resources
from nodes.services import node_release
from scheduler.placement import place
from scheduler.strategies import strategy_get

from ..dispatch import dispatch_start, dispatch_stop, request_pending_placement_on_commit
from ..kinds import kind_capability
from ..models import (
    ACTIVE,
    REPLACED_WHEN_LOST,
    TERMINAL,
    DependencyState,
    EventKind,
    RestartPolicy,
    Workload,
    WorkloadArray,
    WorkloadArrayEvent,
    WorkloadDependency,
    WorkloadEvent,
    WorkloadLog,
    WorkloadStatus,
)
from ..selectors import TRANSITION_FIELDS, dependency_list
from .batches import slices, workload_array_place, workloads_end_many
from .dependencies import CONDITION_WORDS, Target, dependencies_waiting_on, waiting_reason
from .moves import workloads_move
from .quotas import workload_quota_wait

logger = logging.getLogger(__name__)
S = WorkloadStatus

# The one table of allowed moves. lost/failed/succeeded → pending is a restart by policy.
ALLOWED: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.SCHEDULED, S.STOPPED, S.FAILED}),
    S.SCHEDULED: frozenset({S.RUNNING, S.FAILED, S.STOPPED, S.LOST, S.PENDING}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.STOPPED, S.LOST}),
    S.LOST: frozenset({S.PENDING}),
    S.FAILED: frozenset({S.PENDING}),
    S.SUCCEEDED: frozenset({S.PENDING}),
    S.STOPPED: frozenset(),
}
# Which restart policy restarts a workload that reached this state.
RESTARTS_ON = {
    S.LOST: REPLACED_WHEN_LOST,
    S.FAILED: {RestartPolicy.ON_FAILURE, RestartPolicy.ALWAYS},
    S.SUCCEEDED: {RestartPolicy.ALWAYS},
}


def workload_transition(
    *, workload_id=None, workload: Workload | None = None, to: str, reason: str = "",
    expect: Iterable[str] | None = None, only_on: str | None = None, restart: bool = True,
    events: Sequence[WorkloadEvent] = (), node_pk: int | None = None, exit_code: int | None = None,
    runtime: dict | None = None, agent_epoch: int | None = None, restart_count: int | None = None,
) -> bool:
    """Move a workload to ``to`` if the table allows it from its current state.

    The UPDATE re-checks the state it read, so of two racing callers exactly one wins;
    only the winner records the event and releases the node's resources. ``expect``
    narrows the states the caller is willing to move from; ``only_on`` (a node_id) makes an
    agent's report count only while the workload is still placed on that agent's node, so
    a stale copy can never end a workload that now runs elsewhere. A workload that ends in a
    state its restart policy names goes back to pending, unless a user asked it to stop or
    the caller re-queues it itself (``restart=False``). Returns whether it moved.

    A caller that has just read the workload for this move (its node loaded) passes it as
    ``workload`` instead of ``workload_id``, which saves reading it again; the UPDATE re-checks
    its state and node as it would a read's. The copy is brought up to date when it moves (not
    by a restart that move sets off).
    ``events`` (what led to the move) are recorded with it, before its own event, in one INSERT.

    Besides its status, reason and times a move sets only what it names (None leaves a column
    alone): the node a placement claimed (``node_pk``), an agent's report (``exit_code``; the
    ``runtime`` it re-adopts the work from after a restart, stored in the same UPDATE so a
    running row always says how to find its process; ``agent_epoch``), a restart's
    ``restart_count``.
    """
    # No savepoint when nested: nothing here is retried after an error, and a placement's
    # transaction saves two round trips.
    with transaction.atomic(savepoint=False):
        if workload is not None:
            workload_id = workload.pk
            row = _transition_row(workload)
        else:
            row = Workload.objects.filter(pk=workload_id).values(*TRANSITION_FIELDS, "node__node_id").first()
        if row is None:
            return False
        current = row["status"]
        if to not in ALLOWED[current] or (expect is not None and current not in set(expect)):
            return False
        if only_on is not None and row["node__node_id"] != only_on:
            return False
        now = timezone.now()
        named = {"node_id": node_pk, "exit_code": exit_code, "runtime": runtime, "agent_epoch": agent_epoch,
                 "restart_count": restart_count}
        changes = {"status": to, "updated_at": now}
        changes.update((name, value) for name, value in named.items() if value is not None)
        if reason:
            changes["reason"] = reason
        if to == S.SCHEDULED:
            changes["scheduled_at"] = now
        elif to == S.RUNNING:
            changes["started_at"] = now
        elif to in TERMINAL:
            changes["finished_at"] = now
        elif to == S.PENDING:
            changes.update(node=None, scheduled_at=None, dispatched_at=None, started_at=None,
                           finished_at=None, exit_code=None, runtime={}, stop_requested_at=None)
        if not workloads_move([workload_id], current=current, node_pk=row["node_id"], changes=changes):
            return False
        WorkloadEvent.objects.bulk_create([*events, WorkloadEvent(
            workload_id=workload_id, kind=EventKind.TRANSITION, from_status=current, to_status=to,
            node_id=row["node__node_id"] or "", reason=reason,
        )])
        if current in ACTIVE and to not in ACTIVE and row["node_id"]:
            node_release(node_pk=row["node_id"], requirements=_requirements(row))
            request_pending_placement_on_commit()
        logger.info("workload %s: %s -> %s (%s)", workload_id, current, to, reason)
    if workload is not None:
        for name, value in changes.items():
            setattr(workload, name, value)
    if restart:
        _restart_if_due(workload_id=workload_id, row=row, ended=to)
    return True


def workload_restart_if_due(*, workload: Workload, ended: str) -> None:
    """Apply the restart policy to a workload its caller just moved to ``ended`` with
    ``restart=False``, once that caller has finished with the run that ended (an agent frees
    the run's slot first, so a restart placed on it again can start there)."""
    _restart_if_due(workload_id=workload.pk, row=_transition_row(workload), ended=ended)


def _transition_row(workload: Workload) -> dict:
    row = {name: getattr(workload, name) for name in TRANSITION_FIELDS}
    row["node__node_id"] = workload.node.node_id if workload.node_id else None
    return row


def _requirements(row: dict) -> Resources:
    return Resources(
        cpu=row["cpu_millicores"], gpu=row["gpu_count"],
        memory=row["memory_bytes"], storage=row["storage_bytes"],
    )


def _restart_if_due(*, workload_id, row: dict, ended: str) -> None:
    if not row["stop_requested_at"] and row["restart_policy"] in RESTARTS_ON.get(ended, ()):
        if row["restart_count"] < row["max_restarts"]:
            if workload_transition(
                workload_id=workload_id, to=S.PENDING, expect=[ended],
                reason=f"restarting ({row['restart_policy']}) after {ended}, attempt {row['restart_count'] + 1}",
                restart_count=row["restart_count"] + 1,
            ):
                workload_place(workload_id=workload_id)
            return
        workload_note(workload_id=workload_id, reason=f"not restarted: {row['max_restarts']} restarts used")
    if ended in TERMINAL and row["has_dependents"]:
        dependents_settle(ended=[(workload_id, row["array_id"], ended)])


def dependents_settle(*, ended: Sequence[tuple]) -> None:
    """Settle what waits on workloads that ended for good (``(workload_id, array_id, status)``):
    a dependency that now holds counts down its dependent, placed once none is left; one that
    never can fails its dependent, whose own dependents are settled in turn."""
    todo = list(ended)
    while todo:
        workload_id, array_id, status = todo.pop()
        with transaction.atomic():
            decided = dependencies_waiting_on(workload_id=workload_id) if workload_id else []
            if array_id:
                decided += dependencies_waiting_on(array_id=array_id, ended=status)
            for dependency, state in decided:
                todo += _dependency_settle(dependency=dependency, state=state)


def _dependency_settle(*, dependency: WorkloadDependency, state: str) -> list[tuple]:
    """Apply one dependency's verdict, once (the conditional UPDATE of its state). Returns the
    dependents that ended because of it, for their own dependents."""
    if not WorkloadDependency.objects.filter(pk=dependency.pk, state=DependencyState.WAITING).update(state=state):
        return []
    target = Target(dependency.condition, workload=dependency.on_workload, array=dependency.on_array)
    if dependency.array_id:
        return _array_dependency_settle(dependency=dependency, target=target, state=state)
    dependent = dependency.workload_id
    if state == DependencyState.NEVER:
        reason = f"dependency {target.label} ended otherwise, so it can never {CONDITION_WORDS[target.condition]}"
        row = Workload.objects.filter(pk=dependent).values("array_id", "has_dependents").first()
        if row and workload_transition(workload_id=dependent, to=S.FAILED, expect=[S.PENDING], reason=reason,
                                       restart=False) and row["has_dependents"]:
            return [(dependent, row["array_id"], S.FAILED)]
        return []
    Workload.objects.filter(pk=dependent, dependencies_waiting__gt=0).update(
        dependencies_waiting=F("dependencies_waiting") - 1)
    left = Workload.objects.filter(pk=dependent).values_list("dependencies_waiting", flat=True).first()
    workload_note(workload_id=dependent, reason=f"dependency met: {target.label} did {target.condition}")
    if left == 0:
        workload_place(workload_id=dependent)
    elif left:
        Workload.objects.filter(pk=dependent).update(reason=_still_waiting(workload_id=dependent))
    return []


def _array_dependency_settle(*, dependency: WorkloadDependency, target: Target, state: str) -> list[tuple]:
    array_id = dependency.array_id
    if state == DependencyState.NEVER:
        reason = f"dependency {target.label} ended otherwise, so it can never {CONDITION_WORDS[target.condition]}"
        ended = workloads_end_many(instances=Workload.objects.filter(array_id=array_id), to=S.FAILED,
                                   reason=reason, states=[S.PENDING])
        return ended_together(array_id=array_id, ids=ended, status=S.FAILED)
    WorkloadArray.objects.filter(pk=array_id, dependencies_waiting__gt=0).update(
        dependencies_waiting=F("dependencies_waiting") - 1)
    Workload.objects.filter(array_id=array_id, dependencies_waiting__gt=0).update(
        dependencies_waiting=F("dependencies_waiting") - 1)
    left = WorkloadArray.objects.filter(pk=array_id).values_list("dependencies_waiting", flat=True).first()
    WorkloadArrayEvent.objects.create(array_id=array_id,
                                      reason=f"dependency met: {target.label} did {target.condition}")
    if left == 0:
        workload_array_place(array_id=array_id)
    elif left:
        Workload.objects.filter(array_id=array_id, status=S.PENDING).update(reason=_still_waiting(array_id=array_id))
    return []


def ended_together(*, array_id, ids: list, status: str) -> list[tuple]:
    """What ``dependents_settle`` is to look at after an array's instances ``ids`` ended at once:
    the array, once, and those instances that a dependency names on their own."""
    named = set()
    for part in slices(ids):
        named.update(WorkloadDependency.objects.filter(on_workload_id__in=part, state=DependencyState.WAITING)
                     .values_list("on_workload_id", flat=True))
    return [(pk, None, status) for pk in named] + [(None, array_id, status)]


def _still_waiting(*, workload_id=None, array_id=None) -> str:
    waiting = [dependency for dependency in dependency_list(workload_ids=[workload_id] if workload_id else [],
                                                            array_ids=[array_id] if array_id else [])
               if dependency.state == DependencyState.WAITING]
    return waiting_reason([Target(d.condition, workload=d.on_workload, array=d.on_array) for d in waiting])


def workload_requeue(*, workload_id, reason: str) -> bool:
    """Hand a scheduled or running workload back to the queue (its node is going away)."""
    if not workload_transition(workload_id=workload_id, to=S.LOST, expect=ACTIVE, reason=reason, restart=False):
        return False
    if workload_transition(workload_id=workload_id, to=S.PENDING, expect=[S.LOST], reason="requeued"):
        workload_place(workload_id=workload_id)
    return True


def workload_note(*, workload_id, reason: str, kind: str = EventKind.INFO, **extra) -> None:
    WorkloadEvent.objects.create(workload_id=workload_id, kind=kind, reason=reason, **extra)


def workload_record_runtime(*, workload_id, runtime: dict, only_on: str) -> None:
    """Store what an agent learned of a running workload after recording its start (its limits),
    while it still runs there: a restarted agent re-adopts it from this."""
    Workload.objects.filter(pk=workload_id, status=S.RUNNING, node__node_id=only_on).update(runtime=runtime)


def workload_request_stop(*, workload_id) -> None:
    """Record that a workload is to stop. Its agent reads this (a stop message may be lost) and
    reports the exit as stopped; the restart policy no longer applies. The first request's time
    is kept."""
    Workload.objects.filter(pk=workload_id, stop_requested_at__isnull=True).update(stop_requested_at=timezone.now())


def workload_mark_redispatched(*, workload_id) -> None:
    """Note that a scheduled workload's start was sent again: the redispatch loop waits from now
    before it rings once more (from ``scheduled_at`` while it has had only its first doorbell)."""
    Workload.objects.filter(pk=workload_id, status=S.SCHEDULED).update(dispatched_at=timezone.now())


def workload_place(*, workload_id) -> bool:
    """Try to place one pending workload; record the decision either way."""
    def read_and_place() -> bool:
        workload = (Workload.objects.select_related("submitted_node")
                    .filter(pk=workload_id, status=S.PENDING, dependencies_waiting=0).first())
        return workload is not None and workload_place_loaded(workload)

    return atomic_retried(read_and_place)


def workload_place_loaded(workload: Workload, *, earlier_events: Sequence[WorkloadEvent] = ()) -> bool:
    """Place a pending workload the caller has just read (the transition re-checks its status);
    the caller's copy is brought up to date. ``earlier_events`` (a submission's own) are written
    in the same INSERT as the placement's."""
    workload_id = workload.pk
    with transaction.atomic(savepoint=False):
        local = workload.submitted_node.node_id if workload.submitted_node else settings.CNET_LOCAL_NODE_ID
        started = time.perf_counter()
        decision = workload_quota_wait(workload=workload) or place(  # over quota: waits, whatever the nodes
            requirements=workload.requirements,
            local_node_id=local,
            strategy=strategy_get(workload.strategy),
            capability=kind_capability(workload.type),
        )
        observe_placement(seconds=time.perf_counter() - started, strategy=workload.strategy,
                          placed=decision.placed)
        summary = decision.summary()
        if not decision.placed:
            events = list(earlier_events)
            if workload.reason != summary:
                workload.reason = summary
                Workload.objects.filter(pk=workload_id).update(reason=summary)
                events.append(WorkloadEvent(workload_id=workload_id, kind=EventKind.PLACEMENT, reason=summary,
                                            details=decision.reasons))
            WorkloadEvent.objects.bulk_create(events)
            return False
        node_pk, node_id = decision.node.pk, decision.node.node_id
        placed = WorkloadEvent(workload_id=workload_id, kind=EventKind.PLACEMENT, reason=summary,
                               details=decision.reasons, node_id=node_id)
        if not workload_transition(workload=workload, to=S.SCHEDULED, expect=[S.PENDING], reason=summary,
                                   node_pk=node_pk, events=[*earlier_events, placed]):
            # Someone else placed or stopped it meanwhile: give back what we took.
            node_release(node_pk=node_pk, requirements=workload.requirements)
            WorkloadEvent.objects.bulk_create(earlier_events)
            return False
        workload.node = Node.from_db(None, ["id", "node_id"], [node_pk, node_id])  # as .only("node_id") reads it
        transaction.on_commit(lambda: dispatch_start(workload_id=workload_id, node_id=node_id))
    return True


def workload_stop(*, workload: Workload, reason: str = "stopped by user") -> Workload:
    """Stop a workload: at once if it holds no running process, else ask its agent to."""
    status = workload.status
    if status in TERMINAL:
        raise StateConflict(f"workload is already {status}", field="status")
    node_alive = workload.node and workload.node.status != NodeStatus.OFFLINE
    if status == S.RUNNING and node_alive:
        workload_request_stop(workload_id=workload.pk)
        workload_note(workload_id=workload.pk, reason=f"stop requested: {reason}")
        node_id = workload.node.node_id
        transaction.on_commit(lambda: dispatch_stop(workload_id=workload.pk, node_id=node_id))
    elif workload_transition(workload_id=workload.pk, to=S.STOPPED, reason=reason, expect=[status]):
        if status == S.SCHEDULED and node_alive:
            # Its start may already be in flight: the agent kills what it finds.
            node_id = workload.node.node_id
            transaction.on_commit(lambda: dispatch_stop(workload_id=workload.pk, node_id=node_id))
    else:
        workload.refresh_from_db()
        return workload_stop(workload=workload, reason=reason)
    workload.refresh_from_db()
    return workload


def workload_delete(*, workload: Workload) -> None:
    """Delete a workload; a live one is stopped first (its resources released, its process told
    to end), so nothing runs on unrecorded and nothing stays allocated to a deleted row."""
    while True:
        row = Workload.objects.filter(pk=workload.pk).values("status", "node__node_id", "array_id").first()
        if row is None:
            return
        if row["status"] in TERMINAL and Workload.objects.filter(pk=workload.pk, status=row["status"]).delete()[0]:
            return
        if row["status"] not in TERMINAL and workload_transition(
            workload_id=workload.pk, to=S.STOPPED, reason="deleted by user", expect=[row["status"]],
            restart=False,
        ):
            if row["status"] in ACTIVE and row["node__node_id"]:
                dispatch_stop(workload_id=workload.pk, node_id=row["node__node_id"])
            # What waits on it learns it stopped before its dependency rows go with it.
            dependents_settle(ended=[(workload.pk, row["array_id"], S.STOPPED)])
        # Lost a race (it moved meanwhile): read it again.


def workload_logs_append(*, workload_id, chunks: Iterable[tuple[int, str, str]]) -> int:
    """Store log chunks (seq, stream, text). Re-sent chunks are ignored, so shipping is idempotent."""
    rows = [WorkloadLog(workload_id=workload_id, seq=seq, stream=stream, text=text)
            for seq, stream, text in chunks]
    WorkloadLog.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)
