"""Celery entry points: thin wrappers. A prediction sent to an agent runs on its node queue, with
no database (over the node API); one forwarded to a model server, and the sweep, on the control
queue."""

from celery import shared_task

from .agentside import prediction_run, this_agent
from .predictions import prediction_task_forward, prediction_tasks_dispatch_stranded

# A prediction task's own message normally runs it within a second or two; the sweep only
# sends again those still pending after this long.
SWEEP_AFTER_SECONDS = 10
# A run takes a second or two (a process start, fetching a big artifact the first time, at most
# CNET_ML_PREDICT_TIMEOUT_SECONDS): one still running after this long lost its agent. It is
# retried until this many runs were lost, then failed.
RUN_DEADLINE_SECONDS = 120
MAX_ATTEMPTS = 3


@shared_task(name="mlmodels.run_prediction", acks_late=True)
def run_prediction(task_id: str, node_id: str | None = None) -> bool:
    """On the agent of ``node_id`` (the node whose queue carried it)."""
    return prediction_run(this_agent(), task_id)


@shared_task(name="mlmodels.forward_prediction", acks_late=True)
def forward_prediction(task_id: str) -> bool:
    return prediction_task_forward(task_id=task_id)


@shared_task(name="mlmodels.dispatch_stranded_predictions", acks_late=True)
def dispatch_stranded_predictions() -> int:
    return prediction_tasks_dispatch_stranded(older_than_seconds=SWEEP_AFTER_SECONDS,
                                              run_deadline_seconds=RUN_DEADLINE_SECONDS, max_attempts=MAX_ATTEMPTS)
