"""The pending pass: place queued work as room frees, at a cost per placement, not per queued item.

Pending work is examined highest priority first, then oldest (the ``workload_pending_queue``
index, read a page at a time). Only requests that fit the largest free slot of some ready node
are read at all, so a backlog of big requests never hides a small one that would fit now. A
request that found no room makes every later one of its class that is no smaller (same scope,
strategy and kind) skipped for the rest of the pass, in the query itself: placement would fail
for it the same way, and trying each again, with a reason and an event each, is what made the
cost of a release grow with the queue. A smaller request behind it is still tried.
"""

from dataclasses import dataclass

from django.db.models import Q

from nodes.resources import Resources
from nodes.selectors import node_largest_free

from ..models import Workload, WorkloadStatus
from .batches import ARRAY_PENDING_BATCH, workload_array_place
from .lifecycle import workload_place
from .quotas import pending_over_quota

S = WorkloadStatus
# Pending rows read per query; a pass reads on while it finds requests worth trying.
PAGE = 200
COLUMNS = ("pk", "array_id", "priority", "created_at", "cpu_millicores", "gpu_count", "memory_bytes",
           "storage_bytes", "strategy", "submitted_node_id", "type")


@dataclass(frozen=True)
class _Class:
    """What placement decides a request by besides its size: the same class and no smaller, the
    same outcome."""

    strategy: str
    submitted_node_id: int | None
    type: str

    def no_smaller(self, requirements: Resources) -> Q:
        return Q(strategy=self.strategy, submitted_node_id=self.submitted_node_id, type=self.type,
                 cpu_millicores__gte=requirements.cpu, gpu_count__gte=requirements.gpu,
                 memory_bytes__gte=requirements.memory, storage_bytes__gte=requirements.storage)


def workloads_place_pending(*, limit: int = 200) -> int:
    """Place pending workloads, highest priority first, then oldest; at most ``limit`` placements
    tried. Returns how many were placed.

    Workloads still waiting for dependencies are not tried. An array instance met in that order
    places its array's pending instances in one batch (up to ``ARRAY_PENDING_BATCH``)."""
    placed = tried = 0
    no_room: list[Q] = []  # the classes (and sizes) that found no room in this pass
    arrays_tried: set = set()
    after: tuple | None = None
    while tried < limit:
        rows = _pending_page(room=node_largest_free(), no_room=no_room, after=after)
        if not rows:
            break
        for row in rows:
            after = (row["priority"], row["created_at"], row["pk"])
            if row["array_id"] in arrays_tried:
                continue
            # The place for a rule that holds a request back: skip it, record why, go on with the next.
            tried += 1
            if row["array_id"] is None:
                won = workload_place(workload_id=row["pk"])
            else:
                arrays_tried.add(row["array_id"])
                won = workload_array_place(array_id=row["array_id"], limit=ARRAY_PENDING_BATCH)
            placed += won
            if not won:
                no_room.append(_class_of(row))
                break  # read on without the requests this one rules out
            if tried >= limit:
                break
    return placed


def _class_of(row: dict) -> Q:
    requirements = Resources(cpu=row["cpu_millicores"], gpu=row["gpu_count"], memory=row["memory_bytes"],
                             storage=row["storage_bytes"])
    return _Class(row["strategy"], row["submitted_node_id"], row["type"]).no_smaller(requirements)


def _pending_page(*, room: Resources, no_room: list[Q], after: tuple | None) -> list[dict]:
    """The next ``PAGE`` pending requests in queue order after ``after`` that fit ``room`` (the
    largest free slot of each resource), are within their owners' quotas, and that no class in
``no_room`` rules out."""
    queue = Workload.objects.filter(
        status=S.PENDING, dependencies_waiting=0, cpu_millicores__lte=room.cpu, gpu_count__lte=room.gpu,
        memory_bytes__lte=room.memory, storage_bytes__lte=room.storage,
    ).exclude(pending_over_quota())  # held back by its owner's quota (quotas.py): not tried
    for ruled_out in no_room:
        queue = queue.exclude(ruled_out)
    if after is not None:
        priority, created_at, pk = after
        queue = queue.filter(Q(priority__lt=priority) | Q(priority=priority, created_at__gt=created_at)
                             | Q(priority=priority, created_at=created_at, pk__gt=pk))
    return list(queue.order_by("-priority", "created_at", "pk").values(*COLUMNS)[:PAGE])
