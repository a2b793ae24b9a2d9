"""Celery entry points (control queue): thin wrappers over services."""

from celery import shared_task

from .services import prediction_task_run


@shared_task(name="mlmodels.run_prediction", acks_late=True)
def run_prediction(task_id: str) -> bool:
    return prediction_task_run(task_id=task_id)
