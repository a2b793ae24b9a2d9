import os

from celery import Celery
from celery.signals import task_prerun

from core.broker import install as install_embedded_broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cnetsite.settings")

install_embedded_broker()
app = Celery("cnet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
def _database_as_for_a_request(**_kwargs) -> None:
    """Drop connections that broke or outlived CONN_MAX_AGE, as Django does between requests."""
    from django.db import close_old_connections

    close_old_connections()
