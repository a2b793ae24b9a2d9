"""Batches: an array's pending instances placed together, and many workloads ended together, each
a few statements per node rather than a few per workload (DESIGN: cost per job stays flat)."""

import logging
import time
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.db import atomic_retried
from core.instruments import observe_placement
from nodes.resources import NAMES, Resources
from nodes.services import node_release
from scheduler.placement import BatchDecision, place_batch
from scheduler.strategies import TIER_NAMES, strategy_get

from ..dispatch import dispatch_start, dispatch_stop, request_pending_placement_on_commit
from ..kinds import kind_capability
from ..models import ACTIVE, EventKind, Workload, WorkloadArrayEvent, WorkloadEvent, WorkloadStatus
from .quotas import workload_quota_batch

logger = logging.getLogger(__name__)
S = WorkloadStatus


# How many of an array's pending instances one pass of the pending loop places at most.
ARRAY_PENDING_BATCH = 2000
# Ids per ``pk IN (...)`` statement: SQLite allows 32,766 bound values in one statement.
IDS_PER_STATEMENT = 10_000


def slices(ids: list, size: int = IDS_PER_STATEMENT):
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def workload_array_place(*, array_id, limit: int | None = None) -> int:
    """Place an array's pending instances (up to ``limit``, lowest index first) in one batch:
    ``place_batch`` claims room with one UPDATE per node it fills, then one UPDATE per node moves
    that node's share pending → scheduled, with a transition event each (one INSERT) and one
    array event with the batch's reasons per node. One doorbell per node. Returns how many."""
    def read_and_place() -> int:
        instances = Workload.objects.filter(array_id=array_id, status=S.PENDING, dependencies_waiting=0)
        # Locked so that a stop or a second pass cannot move them while this one places them.
        ids = list(instances.select_for_update(skip_locked=True).order_by("array_index")
                   .values_list("pk", flat=True)[:limit])
        if not ids:
            return 0
        template = Workload.objects.select_related("submitted_node").get(pk=ids[0])
        local = template.submitted_node.node_id if template.submitted_node else settings.CNET_LOCAL_NODE_ID
        started = time.perf_counter()
        decision = workload_quota_batch(workload=template, wanted=len(ids), place=lambda count: place_batch(
            requirements=template.requirements, count=count, local_node_id=local,
            strategy=strategy_get(template.strategy), capability=kind_capability(template.type)))
        observe_placement(seconds=time.perf_counter() - started, strategy=template.strategy,
                          placed=bool(decision.placed))
        _scheduled_many(ids=ids, decision=decision, requirements=template.requirements)
        summary = decision.summary()
        if decision.placed < len(ids):
            instances.filter(status=S.PENDING).update(reason=summary)
        WorkloadArrayEvent.objects.create(array_id=array_id, reason=summary, placed=decision.placed,
                                          details=decision.reasons)
        return decision.placed

    return atomic_retried(read_and_place)


def _scheduled_many(*, ids: list, decision: BatchDecision, requirements: Resources) -> None:
    """Move ``ids``, in order, to the nodes ``decision`` claimed room on, each node's share in one
    UPDATE (the rows are locked by the caller, so each moves), with its transition events."""
    now = timezone.now()
    events: list[WorkloadEvent] = []
    offset = 0
    for node, taken in decision.claims:
        share, offset = ids[offset:offset + taken], offset + taken
        reason = f"placed on {node.node_id} ({TIER_NAMES[node.tier]}) with {taken - 1} more in one batch"
        moved = sum(Workload.objects.filter(pk__in=part, status=S.PENDING).update(
            status=S.SCHEDULED, node_id=node.pk, scheduled_at=now, updated_at=now, reason=reason)
            for part in slices(share))
        if moved != len(share):
            # Only reachable if the rows were not locked (a caller outside workload_array_place).
            logger.error("node %s: %d of %d batch instances moved; giving back the rest", node.node_id, moved,
                         len(share))
            node_release(node_pk=node.pk, requirements=_times(requirements, len(share) - moved))
        events += [WorkloadEvent(workload_id=pk, kind=EventKind.TRANSITION, from_status=S.PENDING,
                                 to_status=S.SCHEDULED, node_id=node.node_id, reason=reason) for pk in share]
        node_id, last = node.node_id, share[-1]
        # The agent's work answer lists everything placed on it: one doorbell per node is enough.
        transaction.on_commit(lambda node_id=node_id, last=last: dispatch_start(workload_id=last, node_id=node_id))
    WorkloadEvent.objects.bulk_create(events, batch_size=5000)


def _times(requirements: Resources, n: int) -> Resources:
    return Resources(**{name: getattr(requirements, name) * n for name in NAMES})


def workloads_end_many(*, instances, to: str, reason: str, states: Iterable[str]) -> list:
    """End many workloads at once (an array's): those of ``instances`` in ``states`` move to
    ``to`` (a terminal state), one UPDATE per (state, node), with their events in one INSERT and
    each node's resources given back in one UPDATE. The rows are locked first, so each moves
    exactly once; a running one's agent is rung, once per node. Returns the ids that ended (for
    ``ended_together``); no restart policy applies to such an end."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(instances.filter(status__in=list(states)).select_for_update(of=("self",))
                    .values_list("pk", "status", "node_id", "node__node_id", *RESOURCE_FIELDS))
        groups: dict[tuple, list] = {}
        for row in rows:
            groups.setdefault((row[1], row[2], row[3]), []).append(row)
        events = []
        for (status, node_pk, node_id), group in groups.items():
            ids = [row[0] for row in group]
            for part in slices(ids):
                Workload.objects.filter(pk__in=part, status=status).update(
                    status=to, finished_at=now, updated_at=now, reason=reason)
            events += [WorkloadEvent(workload_id=pk, kind=EventKind.TRANSITION, from_status=status, to_status=to,
                                     node_id=node_id or "", reason=reason) for pk in ids]
            if status in ACTIVE and node_pk:
                node_release(node_pk=node_pk, requirements=Resources(
                    *(sum(row[4 + i] for row in group) for i in range(len(RESOURCE_FIELDS)))))
                request_pending_placement_on_commit()
                transaction.on_commit(lambda pk=ids[-1], node_id=node_id: dispatch_stop(workload_id=pk,
                                                                                         node_id=node_id))
        WorkloadEvent.objects.bulk_create(events, batch_size=5000)
    logger.info("%d workloads: -> %s (%s)", len(rows), to, reason)
    return [row[0] for row in rows]


# In ``Resources``' order (cpu, gpu, memory, storage): what ``workloads_end_many`` gives back.
RESOURCE_FIELDS = ("cpu_millicores", "gpu_count", "memory_bytes", "storage_bytes")
