"""The dry run of a submission (``POST /api/workloads/plan``): where it would go now, or where it
would stand in the queue and when room is expected, or why it never could; nothing is written.

The placement itself is ``scheduler.plan``'s; what it needs to know of workloads (the queue, the
work holding resources and its time limits) is read here."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, JSONField, OuterRef, Q, RowRange, Subquery, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from nodes.resources import Resources
from nodes.services import node_resolve
from scheduler.plan import Release, RoomAsked, expected_room, expected_rooms, never_fits, place_dry_run
from scheduler.quotas import priority_check, quota_never_fits
from scheduler.strategies import strategy_get

from .kinds import kind_capability
from .models import ACTIVE, EventKind, Workload, WorkloadArrayEvent, WorkloadEvent, WorkloadStatus
from .services.quotas import owner_quota_wait

PLACED, WAITS, NEVER = "placed", "waits", "never"
UNKNOWN = "unknown"


def workload_plan(*, owner=None, type: str, requirements: Resources, node: str | None = None,
                  strategy: str | None = None, priority: int = 0, depends_on: list | None = None, **_rest) -> dict:
    """What a submission of this body would meet now. It checks the rules a submission checks (the
    strategy and node exist) and decides with the same placement code; the rest of the body (name,
    config, restart policy…) does not change where it goes. One with dependencies waits for them
    first: its reasons say where it would go if they held now."""
    priority_check(user=owner, priority=priority)
    strategy_name = strategy or settings.CNET_DEFAULT_STRATEGY
    ranked_by = strategy_get(strategy_name)
    local = node_resolve(node).node_id if node else settings.CNET_LOCAL_NODE_ID
    capability = kind_capability(type)
    decision = place_dry_run(requirements=requirements, local_node_id=local, strategy=ranked_by,
                             capability=capability)
    answer = {
        "outcome": PLACED, "node": decision.node.node_id if decision.placed else None,
        "summary": decision.summary(), "reasons": decision.reasons, "strategy": strategy_name,
        "submitted_node": local, "queue": None, "estimated_start": None, "never_fits": None,
    }
    if depends_on:
        return answer | {"outcome": WAITS, "node": None, "estimated_start": UNKNOWN,
                         "summary": f"waits for its dependencies first; then, as things stand: {decision.summary()}"}
    held = owner_quota_wait(owner_id=getattr(owner, "pk", None), requirements=requirements, lock=False)
    if held is not None:  # its owner's quota holds it back, whatever the nodes have
        return _quota_answer(answer, held.summary(), owner, requirements, priority)
    if decision.placed:
        return answer
    short = never_fits(requirements)
    if short is not None:
        return answer | {"outcome": NEVER, "never_fits": short}
    room = expected_room(requirements=requirements, node_ids=[reason["node"] for reason in decision.reasons],
                         capability=capability, releases_on=_releases_on)
    [queue] = queue_places(queued=[Queued(priority=priority)])
    return answer | {"outcome": WAITS, "queue": queue, "estimated_start": _estimate(room)}


def _estimate(room: datetime | None) -> str:
    # A time limit already past (its agent is about to stop it) makes room now, not in the past.
    return max(room, timezone.now()).isoformat() if room else UNKNOWN


@dataclass(frozen=True)
class Queued:
    """A place in the pending queue: a pending workload's (its priority, creation time and id, the
    queue's order), or a new request's (no ``created_at``: behind all of its priority)."""

    priority: int
    created_at: datetime | None = None
    pk: object = None


# Up to this many pending workloads are placed by filtered counts (one pass over the queue, a few
# comparisons a row for each: the cheapest for a workload's own page); more by window functions
# (one pass whose cost per row does not grow with them: a list's page).
COUNTED_AT_MOST = 4


def queue_places(*, queued: list[Queued]) -> list[dict]:
    """Where each stands in the pending queue, highest priority first, then oldest (the order
    ``workloads_place_pending`` takes): ``position`` among pending work of its priority (1-based),
    ``of`` how many of its priority wait (itself included), ``ahead`` how many are placed before
    it. Work still waiting for dependencies is not in the queue yet. At most two queries whatever
    their number, each reading pending rows only, of the lowest priority asked and above."""
    existing = [one for one in queued if one.created_at is not None]
    ranked = _ranked(existing) if len(existing) > COUNTED_AT_MOST else {}
    counted = iter(_counted([one for one in queued if one.pk not in ranked]))
    return [ranked[one.pk] if one.pk in ranked else next(counted) for one in queued]


def _queue(*, lowest: int):
    return Workload.objects.filter(status=WorkloadStatus.PENDING, dependencies_waiting=0, priority__gte=lowest)


def _place(one: Queued, *, position: int, of: int, ahead: int) -> dict:
    return {"priority": one.priority, "position": position, "of": of, "ahead": ahead}


def _counted(queued: list[Queued]) -> list[dict]:
    """Queue places by filtered counts, in one query."""
    if not queued:
        return []
    priorities = sorted({one.priority for one in queued})
    counts = {}
    for number, priority in enumerate(priorities):
        counts[f"level{number}"] = Count("pk", filter=Q(priority=priority))
        counts[f"higher{number}"] = Count("pk", filter=Q(priority__gt=priority))
    for number, one in enumerate(queued):
        if one.created_at is not None:  # a new request is behind all of its level: ``level`` says
            counts[f"before{number}"] = Count("pk", filter=Q(priority=one.priority) & (
                Q(created_at__lt=one.created_at) | Q(created_at=one.created_at, pk__lt=one.pk)))
    got = _queue(lowest=priorities[0]).aggregate(**counts)
    places = []
    for number, one in enumerate(queued):
        level, higher = (got[f"{name}{priorities.index(one.priority)}"] for name in ("level", "higher"))
        if one.created_at is None:  # joins behind every one of its priority
            places.append(_place(one, position=level + 1, of=level + 1, ahead=higher + level))
        else:
            before = got[f"before{number}"]
            places.append(_place(one, position=before + 1, of=level, ahead=higher + before))
    return places


def _ranked(queued: list[Queued]) -> dict:
    """Pending workloads' queue places (by id) by window functions, in one query. Every window is
    ordered as the queue's index is, so the rows are read in order and never sorted: a count over
    "this priority and those above" (a frame of peers) cost three times the rest at 50,000 pending
    (bench/big_tables.py); its place among its peers and their number per priority do not."""
    queue_order = [F("priority").desc(), F("created_at").asc(), F("pk").asc()]
    by_priority = {"partition_by": [F("priority")], "order_by": queue_order}
    ranked = _queue(lowest=min(one.priority for one in queued)).order_by().annotate(
        in_queue=Window(RowNumber(), order_by=queue_order),
        position=Window(RowNumber(), **by_priority),
        level=Window(Count("pk"), **by_priority, frame=RowRange(start=None, end=None)),
    ).values_list("pk", "in_queue", "position", "level")
    # The ids are picked after the windows are counted, so in an outer query: a filter of the
    # queryset itself would go inside, and rank them among themselves.
    sql, params = ranked.query.sql_with_params()
    column = Workload._meta.pk
    marks = ", ".join(["%s"] * len(queued))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM ({sql}) ranked WHERE ranked.pk IN ({marks})",
                       [*params, *(column.get_db_prep_value(one.pk, connection) for one in queued)])
        rows = {column.to_python(pk): counts for pk, *counts in cursor.fetchall()}
    places = {}
    for one in queued:
        if one.pk in rows:  # not if it left the queue since it was read: it is counted instead
            in_queue, position, level = rows[one.pk]
            places[one.pk] = _place(one, position=position, of=level, ahead=in_queue - 1)
    return places


def workload_queues(*, workloads: list[Workload]) -> dict:
    """For each pending workload (by id): where it stands in the queue and when it is expected to
    start, as a plan would answer for it now, and the reason it waits; None for one not pending.
    One waiting for its dependencies has no place yet (``position`` None). Four queries whatever
    the number (the queue, the nodes its last placement considered, those nodes, the releases on
    them), so a page of a list costs what one workload does."""
    answers: dict = {workload.pk: None for workload in workloads}
    pending = [w for w in workloads if w.status == WorkloadStatus.PENDING]
    if not pending:  # a placed submission's answer: it must not hold up its own start's requests
        return answers
    queued = [w for w in pending if w.dependencies_waiting == 0]
    places = queue_places(queued=[Queued(w.priority, w.created_at, w.pk) for w in queued])
    considered = _nodes_considered(queued)
    rooms = expected_rooms(asked=[RoomAsked(w.requirements, considered.get(w.pk, []), kind_capability(w.type))
                                  for w in queued], releases_on=_releases_on)
    for workload, place, room in zip(queued, places, rooms, strict=True):
        answers[workload.pk] = place | {"estimated_start": _estimate(room), "reason": workload.reason}
    for workload in pending:
        if workload.dependencies_waiting:
            answers[workload.pk] = {"priority": workload.priority, "position": None, "of": None, "ahead": None,
                                    "estimated_start": UNKNOWN, "reason": workload.reason}
    return answers


def _nodes_considered(workloads: list[Workload]) -> dict:
    """The nodes each workload's latest placement attempt gave a reason for (an array instance:
    its array's latest batch), in one query on the event indexes."""
    if not workloads:
        return {}
    own = WorkloadEvent.objects.filter(workload=OuterRef("pk"), kind=EventKind.PLACEMENT).order_by("-id")
    batch = WorkloadArrayEvent.objects.filter(array=OuterRef("array_id")).order_by("-id")
    rows = Workload.objects.filter(pk__in=[w.pk for w in workloads]).annotate(
        own=Subquery(own.values("details")[:1], output_field=JSONField()),
        batch=Subquery(batch.values("details")[:1], output_field=JSONField()),
    ).values_list("pk", "own", "batch")
    return {pk: [reason["node"] for reason in (own or batch or []) if "node" in reason] for pk, own, batch in rows}


def _quota_answer(answer: dict, why: str, owner, requirements: Resources, priority: int) -> dict:
    """It waits until its owner's own work ends (when, nothing here knows), or, past a cap even
    with none of theirs running, never runs (a submission is refused)."""
    if quota_never_fits(owner_id=owner.pk, requirements=requirements):
        return answer | {"outcome": NEVER, "node": None, "summary": why,
                         "never_fits": {"node": None, "capacity": None, "short": [why]}}
    [queue] = queue_places(queued=[Queued(priority=priority)])
    return answer | {"outcome": WAITS, "node": None, "summary": why, "queue": queue, "estimated_start": UNKNOWN}


def _releases_on(node_pks: list[int]) -> list[Release]:
    rows = Workload.objects.filter(node_id__in=node_pks, status__in=ACTIVE).values(
        "node_id", "started_at", "scheduled_at", "max_runtime_seconds",
        "cpu_millicores", "gpu_count", "memory_bytes", "storage_bytes")
    return [
        Release(
            node_pk=row["node_id"],
            resources=Resources(cpu=row["cpu_millicores"], gpu=row["gpu_count"], memory=row["memory_bytes"],
                                storage=row["storage_bytes"]),
            by=_ends_by(row),
        )
        for row in rows
    ]


def _ends_by(row: dict):
    """When its time limit ends it at the latest: from its start (from its placement while it has
    not started yet, which can only be earlier); None without a limit."""
    began = row["started_at"] or row["scheduled_at"]
    if row["max_runtime_seconds"] is None or began is None:
        return None
    return began + timedelta(seconds=row["max_runtime_seconds"])
