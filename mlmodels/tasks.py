"""Celery entry points (control queue): thin wrappers over services."""

from celery import shared_task

from .services import prediction_task_run, prediction_tasks_run_pending

# A prediction task's own message normally runs it within milliseconds; the sweep only
# picks up those still pending after this long (their message was lost).
SWEEP_AFTER_SECONDS = 10


@shared_task(name="mlmodels.run_prediction", acks_late=True)
def run_prediction(task_id: str) -> bool:
    return prediction_task_run(task_id=task_id)


@shared_task(name="mlmodels.run_stranded_predictions", acks_late=True)
def run_stranded_predictions() -> int:
    return prediction_tasks_run_pending(older_than_seconds=SWEEP_AFTER_SECONDS)
