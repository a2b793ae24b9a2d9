"""Quotas as placement meets them: what each user's work holds now (``scheduler.quotas`` reads no
workload), and the three calls the placement paths make: one request, an array's batch, and the
pending pass's filter."""

from functools import reduce
from operator import or_

from django.db.models import Count, Q, Sum

from nodes.resources import Resources
from scheduler.placement import BatchDecision, Decision
from scheduler.quotas import Usage, quota_capped_batch, quota_limits, quota_wait, quotas_exist

from ..models import ACTIVE, Workload

# The request's column for each capped resource (``workloads`` is a count of rows).
REQUEST_COLUMNS = {"cpu": "cpu_millicores", "memory": "memory_bytes", "gpu": "gpu_count"}


def quota_usage(*, owner_ids=None) -> dict[int, Usage]:
    """What the scheduled and running work of each owner (of ``owner_ids``; else every owner with
    such work) holds now."""
    active = Workload.objects.filter(status__in=ACTIVE, owner__isnull=False)
    if owner_ids is not None:
        active = active.filter(owner_id__in=list(owner_ids))
    rows = active.order_by().values("owner_id").annotate(
        cpu=Sum("cpu_millicores"), memory=Sum("memory_bytes"), gpu=Sum("gpu_count"), workloads=Count("pk"))
    return {row.pop("owner_id"): Usage(**row) for row in rows}


def _usage_of(owner_id: int) -> Usage:
    return quota_usage(owner_ids=[owner_id]).get(owner_id, Usage())


def workload_quota_wait(*, workload: Workload) -> Decision | None:
    """The wait, with its reason, when the owner's quota holds this pending workload back."""
    return owner_quota_wait(owner_id=workload.owner_id, requirements=workload.requirements)


def owner_quota_wait(*, owner_id: int | None, requirements: Resources, lock: bool = True) -> Decision | None:
    return quota_wait(owner_id=owner_id, requirements=requirements, usage_of=_usage_of, lock=lock)


def workload_quota_batch(*, workload: Workload, wanted: int, place) -> BatchDecision:
    """``place(count)`` for as many of ``wanted`` instances like ``workload`` as its owner's quota allows."""
    return quota_capped_batch(owner_id=workload.owner_id, requirements=workload.requirements, wanted=wanted,
                              usage_of=_usage_of, place=place)


def pending_over_quota() -> Q:
    """Pending work whose owner's quota holds it back now, for the pending pass to leave out, so
    that one user's backlog over quota never fills the pass ahead of others' work. Only owners
    with work running are read (an owner with none is tried, and told, one request at a time)."""
    if not quotas_exist():
        return Q()
    usage = quota_usage()
    held = []
    for owner_id, limit in quota_limits(owner_ids=usage).items():
        left = limit.left(usage[owner_id])
        too_big = [Q(**{f"{column}__gt": left[name]}) for name, column in REQUEST_COLUMNS.items() if name in left]
        if left.get("workloads") == 0:
            held.append(Q(owner_id=owner_id))
        elif too_big:
            held.append(Q(owner_id=owner_id) & reduce(or_, too_big))
    return reduce(or_, held, Q())

