from django.db.models import Count, F, Max, OuterRef, QuerySet, Subquery, Sum, Value, Window
from django.db.models.functions import Coalesce, Length, Replace

from core.errors import InvalidRequest

from .models import ACTIVE, EventKind, Workload, WorkloadEvent, WorkloadLog, WorkloadStatus

# What a transition reads of a workload: its state, its claim, and its restart policy.
TRANSITION_FIELDS = (
    "status", "node_id", "cpu_millicores", "gpu_count", "memory_bytes", "storage_bytes",
    "restart_policy", "restart_count", "max_restarts", "stop_requested_at",
)


def workload_for_transition(*, workload_id) -> Workload | None:
    """A workload as ``workload_transition`` needs it (with its node's name), and no more."""
    return (
        Workload.objects.select_related("node").only(*TRANSITION_FIELDS, "node__node_id")
        .filter(pk=workload_id).first()
    )


def workload_list(*, user) -> QuerySet[Workload]:
    """Workloads a user may see: all for staff, their own otherwise."""
    workloads = Workload.objects.select_related("node", "submitted_node", "owner")
    if user.is_staff:
        return workloads
    return workloads.filter(owner=user)


def workload_log_tail(*, workload: Workload, lines: int | None) -> list[str]:
    """The last ``lines`` lines of output (all when None), oldest first, read back from chunks."""
    if lines is not None and lines < 0:
        raise InvalidRequest("must be a non-negative integer", field="lines")
    chunks = WorkloadLog.objects.filter(workload=workload).order_by("-seq").values_list("text", flat=True)
    collected: list[str] = []
    for text in chunks.iterator(chunk_size=200):
        collected[:0] = text.splitlines()
        if lines is not None and len(collected) >= lines:
            break
    if lines is None:
        return collected
    return collected[-lines:] if lines else []


def workload_log_tails(*, workload_ids: list, lines: int) -> dict[str, list[str]]:
    """The last ``lines`` lines of each workload's output, oldest first, in one query.

    A chunk is read only while the newer chunks of its workload hold fewer than ``lines``
    newlines (a lower bound of their lines), so a long log costs the few chunks its tail is in.
    """
    if not lines or not workload_ids:
        return {}
    text = "log_chunks__text"
    newlines = Length(text) - Length(Replace(text, Value("\n"), Value("")))
    chunks = (
        Workload.objects.filter(pk__in=workload_ids, log_chunks__isnull=False)
        .annotate(newer_newlines=Window(Sum(newlines), partition_by=F("pk"), order_by=F("log_chunks__seq").desc())
                  - newlines)
        .filter(newer_newlines__lt=lines)
        .order_by("pk", "log_chunks__seq").values_list("pk", text)
    )
    tails: dict[str, list[str]] = {}
    for pk, chunk in chunks:
        tails.setdefault(str(pk), []).extend(chunk.splitlines())
    return {pk: collected[-lines:] for pk, collected in tails.items()}


def workload_counts_by_status(*, user) -> dict[str, int]:
    counts = dict(
        workload_list(user=user).order_by().values("status").annotate(n=Count("pk")).values_list("status", "n")
    )
    return {status: counts.get(status, 0) for status in WorkloadStatus.values} | {"total": sum(counts.values())}


def workload_events_recent(*, user, limit: int = 20) -> QuerySet[WorkloadEvent]:
    """The latest events (placements, transitions, notes) on workloads the user may see."""
    events = WorkloadEvent.objects.select_related("workload").order_by("-id")
    if not user.is_staff:
        events = events.filter(workload__owner=user)
    return events[:limit]


def workload_active_counts_by_node(*, user) -> dict[int, int]:
    """How many scheduled/running workloads (that the user may see) each node holds, by node pk."""
    rows = (
        workload_list(user=user).filter(status__in=ACTIVE, node__isnull=False)
        .order_by().values("node").annotate(n=Count("pk")).values_list("node", "n")
    )
    return dict(rows)


# What an agent needs to start, re-adopt or stop a workload: what its executors read of the row.
WORK_FIELDS = (
    "id", "name", "type", "status", "config", "cpu_millicores", "gpu_count", "memory_bytes", "storage_bytes",
    "restart_policy", "restart_count", "priority", "runtime", "agent_epoch", "scheduled_at", "started_at",
    "stop_requested_at",
)


def node_work(*, node_pk: int) -> list[Workload]:
    """The workloads scheduled or running on a node, as its agent needs them, highest priority
    first, then oldest placement; one read on the ``workload_node_status`` index. Each carries
    ``log_next_seq``: the number its agent gives the next output chunk (a rerun continues the
    numbering of the runs before it)."""
    last_seq = WorkloadLog.objects.filter(workload_id=OuterRef("pk")).values("workload_id").annotate(
        last=Max("seq")).values("last")
    return list(
        Workload.objects.filter(node_id=node_pk, status__in=ACTIVE).only(*WORK_FIELDS)
        .annotate(log_next_seq=Coalesce(Subquery(last_seq) + 1, 0))
        .order_by("-priority", "scheduled_at", "id")
    )


def workloads_foreign_to(*, node, placed: dict) -> set:
    """Of some workloads (id → the pk of the node each is placed on, None where none), those
    ``node`` may not act for: placed on another node, or placed nowhere and never on it.

    A workload its restart policy took back to pending is placed nowhere until it is placed
    again, but its last run was this node's: a retried batch about that run (its exit report,
    its last log lines) is not refused. Only then are its events read (``event_workload``)."""
    foreign = {pk for pk, on in placed.items() if on is not None and on != node.pk}
    unplaced = [pk for pk, on in placed.items() if on is None]
    if unplaced:
        placements = WorkloadEvent.objects.filter(workload_id__in=unplaced, kind=EventKind.PLACEMENT,
                                                  node_id=node.node_id)
        here = set(placements.values_list("workload_id", flat=True).distinct())
        foreign.update(pk for pk in unplaced if pk not in here)
    return foreign
