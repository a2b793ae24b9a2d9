"""Two control-loop passes at once (two beats, two workers) decide each slot once: one run row and
one workload per slot. On Postgres, where the passes really overlap (SQLite takes one writer)."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection

from nodes.resources import Resources
from tests.helpers import GiB, at_once, make_node
from workloads.models import ScheduleRun, ScheduleRunOutcome, Workload
from workloads.services import schedule_create, schedules_run_due

START = datetime(2026, 12, 1, 11, 59, 30, tzinfo=UTC)
PASSES = 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs passes that overlap: Postgres")
@pytest.mark.django_db(transaction=True)
def test_two_passes_at_once_create_exactly_one_run_per_slot():
    with time_machine.travel(START, tick=False) as clock:
        make_node("local", cpu=64, memory=64 * GiB)
        schedules = [schedule_create(owner=None, name=f"every-minute-{i}", cron="* * * * *",
                                     starting_deadline_seconds=300, type="process",
                                     config={"command": "true"}, requirements=Resources(cpu=100, memory=GiB // 64))
                     for i in range(3)]
        for minute in range(5):
            clock.move_to(datetime(2026, 12, 1, 12, minute, tzinfo=UTC) + timedelta(seconds=1))
            assert sum(at_once(PASSES, schedules_run_due)) == 3  # each schedule's slot won by one pass or the other
        clock.move_to(datetime(2026, 12, 1, 12, 8, 1, tzinfo=UTC))  # 12:05 … 12:08: four slots at once each
        assert sum(at_once(PASSES, schedules_run_due)) == 12
        for schedule in schedules:
            slots = list(ScheduleRun.objects.filter(schedule=schedule).values_list("slot", "outcome"))
            assert len(slots) == len(set(slots)) == 9
            assert {outcome for _, outcome in slots} == {ScheduleRunOutcome.STARTED}
        assert Workload.objects.count() == 27
        assert Workload.objects.values("name").distinct().count() == 27
