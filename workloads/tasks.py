"""Celery entry points: thin wrappers that call services.

Every task is idempotent (it re-reads the row and returns if the work is done), which is
what makes ``acks_late`` safe: Redis may deliver a message again after its visibility
timeout, and a redelivered start finds the workload no longer ``scheduled``.
"""

from celery import shared_task

from . import control
from .logs import workload_logs_expire
from .services import workloads_place_pending


@shared_task(name="workloads.start", acks_late=True, reject_on_worker_lost=True)
def start_workload(workload_id: str) -> None:
    """A doorbell: the agent asks the control plane what is placed on its node and starts that.
    The message carries no authority: a forged or replayed one starts nothing."""
    from .agent.runtime import current_agent

    current_agent().start(workload_id)


@shared_task(name="workloads.stop", acks_late=True, reject_on_worker_lost=True)
def stop_workload(workload_id: str) -> None:
    """A doorbell: the agent beats now and stops what the answer says a user asked to stop."""
    from .agent.runtime import current_agent

    current_agent().look(workload_id)


@shared_task(name="workloads.place_pending", acks_late=True)
def place_pending() -> int:
    return workloads_place_pending()


@shared_task(name="workloads.control_tick", acks_late=True)
def control_tick() -> dict:
    return control.tick()


@shared_task(name="workloads.logs_expire", acks_late=True)
def logs_expire() -> int:
    """Hourly (beat): output and events of workloads that ended CNET_LOG_RETENTION_DAYS ago go."""
    return workload_logs_expire()
