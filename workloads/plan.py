"""The dry run of a submission (``POST /api/workloads/plan``): where it would go now, or where it
would stand in the queue and when room is expected, or why it never could; nothing is written.

The placement itself is ``scheduler.plan``'s; what it needs to know of workloads (the queue, the
work holding resources and its time limits) is read here."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from nodes.resources import Resources
from nodes.services import node_resolve
from scheduler.plan import Release, expected_room, never_fits, place_dry_run
from scheduler.quotas import priority_check, quota_never_fits
from scheduler.strategies import strategy_get

from .kinds import kind_capability
from .models import ACTIVE, Workload, WorkloadStatus
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
    return answer | {"outcome": WAITS, "queue": _queue_place(priority),
                     "estimated_start": max(room, timezone.now()).isoformat() if room else UNKNOWN}


def _quota_answer(answer: dict, why: str, owner, requirements: Resources, priority: int) -> dict:
    """It waits until its owner's own work ends (when, nothing here knows), or, past a cap even
    with none of theirs running, never runs (a submission is refused)."""
    if quota_never_fits(owner_id=owner.pk, requirements=requirements):
        return answer | {"outcome": NEVER, "node": None, "summary": why,
                         "never_fits": {"node": None, "capacity": None, "short": [why]}}
    return answer | {"outcome": WAITS, "node": None, "summary": why, "queue": _queue_place(priority),
                     "estimated_start": UNKNOWN}


def _queue_place(priority: int) -> dict:
    """Where a new request of this priority joins the pending queue (highest priority first, then
    oldest): behind every pending one of its priority and above."""
    pending = Workload.objects.filter(status=WorkloadStatus.PENDING, dependencies_waiting=0, priority__gte=priority)
    same = pending.filter(priority=priority).count()
    return {"priority": priority, "position": same + 1, "ahead": pending.count()}


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
