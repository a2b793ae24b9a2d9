"""Output and events of workloads that ended more than CNET_LOG_RETENTION_DAYS ago are deleted."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from tests.helpers import make_node, submit_process
from workloads.logs import workload_logs_append, workload_logs_expire
from workloads.models import Workload, WorkloadEvent, WorkloadLog, WorkloadLogUsage, WorkloadStatus
from workloads.tasks import logs_expire

pytestmark = pytest.mark.django_db
S = WorkloadStatus


def ended(days_ago: float | None, status=S.SUCCEEDED) -> Workload:
    workload = submit_process(cpu=0.1)
    workload_logs_append(workload_id=workload.pk, chunks=[(0, "stdout", "out\n")])
    finished = timezone.now() - timedelta(days=days_ago) if days_ago is not None else None
    Workload.objects.filter(pk=workload.pk).update(status=status, finished_at=finished)
    return workload


def kept(workload) -> tuple[bool, bool]:
    return (WorkloadLog.objects.filter(workload=workload).exists(),
            WorkloadEvent.objects.filter(workload=workload).exists())


def test_logs_and_events_of_work_ended_long_ago_go_and_the_rest_stay(settings):
    settings.CNET_LOG_RETENTION_DAYS = 30
    make_node("local", cpu=8)
    old, old_failed = ended(31), ended(40, status=S.FAILED)
    recent, running = ended(29), ended(None, status=S.RUNNING)
    assert workload_logs_expire(batch=1) == 2  # one per transaction: the loop goes on until none are left
    assert kept(old) == kept(old_failed) == (False, False)
    assert not WorkloadLogUsage.objects.filter(workload__in=[old, old_failed]).exists()
    assert kept(recent) == kept(running) == (True, True)
    assert Workload.objects.filter(pk=old.pk).exists()  # the workload itself stays listed
    assert workload_logs_expire() == 0  # nothing left to find: a second pass does nothing


def test_the_task_runs_it_and_beat_schedules_it_on_the_control_queue():
    make_node("local")
    old = ended(31)
    assert logs_expire() == 1 and kept(old) == (False, False)
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "workloads.logs_expire")
    assert entry["options"]["queue"] == "control"
