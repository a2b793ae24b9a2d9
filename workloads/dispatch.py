"""Sending work to agents. The broker is a doorbell; the database is the record.

A start message that is lost (broker down, agent killed before it acked) is not a lost
workload: the control loop re-dispatches scheduled work nobody acknowledged
(``workloads_redispatch_unacknowledged``), and starts are idempotent, so a doorbell that
rings twice is harmless.
"""

import logging

from django.utils import timezone

logger = logging.getLogger(__name__)

CONTROL_QUEUE = "control"


def node_queue(node_id: str) -> str:
    """The one place that names a node's queue."""
    return f"node.{node_id}"


def dispatch_start(*, workload_id, node_id: str) -> bool:
    """Ring the doorbell of the node a workload was placed on.

    Callers know the node (they just placed the workload, or read it with the workload); a
    start that finds the workload no longer scheduled there is ignored by the agent."""
    from .tasks import start_workload as start_workload_task

    return _publish(start_workload_task, [str(workload_id)], node_queue(node_id))


def dispatch_start_again(*, workload_id, node_id: str) -> bool:
    """Ring again for a start nobody acknowledged, and note when: the redispatch loop waits
    from then (from ``scheduled_at`` while a workload has only had its first doorbell)."""
    from .models import Workload, WorkloadStatus

    if not dispatch_start(workload_id=workload_id, node_id=node_id):
        return False
    Workload.objects.filter(pk=workload_id, status=WorkloadStatus.SCHEDULED).update(
        dispatched_at=timezone.now()
    )
    return True


def dispatch_stop(*, workload_id, node_id: str) -> bool:
    from .tasks import stop_workload as stop_workload_task

    return _publish(stop_workload_task, [str(workload_id)], node_queue(node_id))


def request_pending_placement() -> bool:
    """Ask the control worker to place pending work (resources were just released)."""
    from .tasks import place_pending as place_pending_task

    return _publish(place_pending_task, [], CONTROL_QUEUE)


def _publish(task, args: list, queue: str) -> bool:
    try:
        task.apply_async(args=args, queue=queue)
    except Exception:  # broker down: the control loops will ring again
        logger.warning("could not publish %s%s to %s; control loop will retry", task.name, args, queue, exc_info=True)
        return False
    return True
