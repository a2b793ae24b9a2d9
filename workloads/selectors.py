from django.db.models import Count, QuerySet

from cnetsite.errors import InvalidRequest

from .models import Workload, WorkloadLog, WorkloadStatus


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


def workload_counts_by_status(*, user) -> dict[str, int]:
    counts = dict(
        workload_list(user=user).order_by().values("status").annotate(n=Count("pk")).values_list("status", "n")
    )
    return {status: counts.get(status, 0) for status in WorkloadStatus.values} | {"total": sum(counts.values())}
