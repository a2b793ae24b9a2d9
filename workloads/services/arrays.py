"""Writes on arrays as a whole: stop and delete, each a few statements per node, not per instance.
One instance is stopped or deleted by its own workload endpoints (``lifecycle``)."""

from django.db import transaction
from django.utils import timezone

from core.errors import StateConflict

from ..dispatch import dispatch_stop
from ..models import TERMINAL, Workload, WorkloadArray, WorkloadArrayEvent, WorkloadStatus
from .batches import workloads_end_many
from .lifecycle import dependents_settle, ended_together

S = WorkloadStatus


def workload_array_stop(*, array: WorkloadArray, reason: str = "stopped by user") -> WorkloadArray:
    """Stop every instance: those not started end at once (their resources given back per node);
    running ones are asked to stop, their agents rung once per node. 409 when all have ended."""
    instances = Workload.objects.filter(array=array)
    with transaction.atomic():
        if not instances.exclude(status__in=TERMINAL).exists():
            raise StateConflict("every instance of the array has already ended", field="status")
        ended = workloads_end_many(instances=instances, to=S.STOPPED, reason=reason, states=[S.PENDING, S.SCHEDULED])
        running = instances.filter(status=S.RUNNING, stop_requested_at__isnull=True)
        nodes = set(running.values_list("node__node_id", flat=True).distinct())
        asked = running.update(stop_requested_at=timezone.now())
        WorkloadArrayEvent.objects.create(
            array=array, reason=f"stop requested: {reason}; {len(ended)} not yet running stopped, "
                                f"{asked} running asked to stop")
        for node_id in nodes:
            last = instances.filter(node__node_id=node_id, status=S.RUNNING).values_list("pk", flat=True).first()
            if last is not None:
                transaction.on_commit(lambda last=last, node_id=node_id: dispatch_stop(workload_id=last,
                                                                                     node_id=node_id))
        dependents_settle(ended=ended_together(array_id=array.pk, ids=ended, status=S.STOPPED))
    return array


def workload_array_delete(*, array: WorkloadArray) -> None:
    """Delete an array and its instances; live ones are stopped first (resources given back,
    agents told), and what waits on the array learns that it stopped."""
    with transaction.atomic():
        ended = workloads_end_many(instances=Workload.objects.filter(array=array), to=S.STOPPED,
                                   reason="deleted by user", states=[S.PENDING, S.SCHEDULED, S.RUNNING])
        dependents_settle(ended=ended_together(array_id=array.pk, ids=ended, status=S.STOPPED))
        array.delete()
