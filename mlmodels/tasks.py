"""Celery entry points: thin wrappers over services. Predictions run on an agent's node queue,
the sweep on the control queue."""

from celery import shared_task

from .services import prediction_task_run, prediction_tasks_dispatch_stranded

# A prediction task's own message normally runs it within milliseconds; the sweep only
# sends again those still pending after this long.
SWEEP_AFTER_SECONDS = 10
# A run takes milliseconds (seconds to load a big artifact the first time): one still running
# after this long lost its agent. It is retried until this many runs were lost, then failed.
RUN_DEADLINE_SECONDS = 120
MAX_ATTEMPTS = 3


@shared_task(name="mlmodels.run_prediction", acks_late=True)
def run_prediction(task_id: str, node_id: str | None = None) -> bool:
    # node_id: the node whose queue carried it (absent in messages sent before it was recorded).
    return prediction_task_run(task_id=task_id, node_id=node_id)


@shared_task(name="mlmodels.dispatch_stranded_predictions", acks_late=True)
def dispatch_stranded_predictions() -> int:
    return prediction_tasks_dispatch_stranded(older_than_seconds=SWEEP_AFTER_SECONDS,
                                              run_deadline_seconds=RUN_DEADLINE_SECONDS, max_attempts=MAX_ATTEMPTS)
