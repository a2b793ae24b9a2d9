import os

from celery import Celery

from .broker import install as install_embedded_broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cnetsite.settings")

install_embedded_broker()
app = Celery("cnet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
