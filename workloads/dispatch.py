"""Sending work to agents. The broker is a doorbell; the database is the record.

A start message that is lost (broker down, agent killed before it acked) is not a lost
workload: the control loop re-dispatches scheduled work nobody acknowledged
(``control.redispatch_unacknowledged``), and starts are idempotent, so a doorbell that
rings twice is harmless. Tasks are sent by name: this module is below the task modules, which
call the services that call it.
"""

import logging

from celery import current_app
from django.db import transaction

from .models import Workload, WorkloadStatus

logger = logging.getLogger(__name__)

CONTROL_QUEUE = "control"


def node_queue(node_id: str) -> str:
    """The one place that names a node's queue."""
    return f"node.{node_id}"


def dispatch_start(*, workload_id, node_id: str) -> bool:
    """Ring the doorbell of the node a workload was placed on.

    Callers know the node (they just placed the workload, or read it with the workload); a
    start that finds the workload no longer scheduled there is ignored by the agent."""
    return publish("workloads.start", [str(workload_id)], node_queue(node_id))


def dispatch_stop(*, workload_id, node_id: str) -> bool:
    return publish("workloads.stop", [str(workload_id)], node_queue(node_id))


def request_pending_placement() -> bool:
    """Ask the control worker to place pending work (resources were just released)."""
    return publish("workloads.place_pending", [], CONTROL_QUEUE)


def request_pending_placement_on_commit() -> None:
    """Ask for a pending pass once the current transaction commits, if some pending work waits
    then: once per transaction, however many releases it holds (a batch of exits rings one
    doorbell, and one pass uses all the room)."""
    connection = transaction.get_connection()
    if connection.in_atomic_block and any(func is _request_if_pending
                                          for _savepoints, func, _robust in connection.run_on_commit):
        return
    transaction.on_commit(_request_if_pending)


def _request_if_pending() -> bool:
    """Most releases free room nobody waits for (each exit of a burst of short jobs): the control
    worker is one process, and a pass per exit would queue its liveness ticks behind empty passes.
    Asked after the commit, from an index; a submission that went pending while this committed
    is placed by the control tick's own pass (CNET_CONTROL_TICK_SECONDS) if not by a ring."""
    if not Workload.objects.filter(status=WorkloadStatus.PENDING, dependencies_waiting=0).exists():
        return False
    return request_pending_placement()


def publish(task_name: str, args: list, queue: str) -> bool:
    """Send a task by its registered name; False (logged) when the broker is down. A signature
    applies the registered task where there is one, so ``task_always_eager`` still holds."""
    try:
        current_app.signature(task_name, args=args).apply_async(queue=queue)
    except Exception:  # broker down: the control loops will ring again
        logger.warning("could not publish %s%s to %s; control loop will retry", task_name, args, queue, exc_info=True)
        return False
    return True
