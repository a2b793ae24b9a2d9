"""Schedules (issue 16, point 3): one run per slot, missed slots within the deadline run and older
ones are recorded as missed, the concurrency policies, pause and resume, the next five run times,
and bad input refused whole. The clock is moved (time-machine), never waited for."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import IntegrityError, transaction

from nodes.liveness import node_heartbeat
from nodes.models import Node
from tests.helpers import GiB, make_node
from workloads import control
from workloads.models import (
    Schedule,
    ScheduleEvent,
    ScheduleRun,
    ScheduleRunOutcome,
    Workload,
    WorkloadEvent,
    WorkloadStatus,
)
from workloads.services import schedules_run_due, workload_transition

pytestmark = pytest.mark.django_db
START = datetime(2026, 12, 1, 11, 58, 30, tzinfo=UTC)
Outcome = ScheduleRunOutcome
BODY = {
    "name": "report", "type": "process", "requirements": {"cpu": 0.5, "memory": 268435456},
    "config": {"command": "echo", "args": ["hello"], "env": {"A": "1"}},
}


@pytest.fixture(autouse=True)
def local_node():
    make_node("local", cpu=4, memory=8 * GiB)


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def create(api, **fields) -> dict:
    response = api.post("/api/schedules", BODY | fields, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def runs(schedule_id) -> list[tuple[datetime, str]]:
    return list(ScheduleRun.objects.filter(schedule_id=schedule_id).order_by("slot").values_list("slot", "outcome"))


def at(hour: int, minute: int, day: int = 1) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC)


def test_a_schedule_answers_its_next_five_run_times_in_its_timezone(api, clock):
    # 03:00 in Berlin is 02:00 UTC in winter; across the end of March it becomes 01:00 UTC.
    clock.move_to(datetime(2027, 3, 26, 12, 0, tzinfo=UTC))
    schedule = create(api, schedule="0 3 * * *", timezone="Europe/Berlin")
    assert schedule["next_runs"] == [
        "2027-03-27T02:00:00Z", "2027-03-28T01:00:00Z", "2027-03-29T01:00:00Z",
        "2027-03-30T01:00:00Z", "2027-03-31T01:00:00Z",
    ]
    assert schedule | {"next_runs": None, "id": None, "created_at": None} == {
        "id": None, "name": "report", "schedule": "0 3 * * *", "timezone": "Europe/Berlin",
        "concurrency_policy": "allow", "starting_deadline_seconds": 300, "paused": False, "paused_at": None,
        "next_runs": None, "last_run": None, "owner": "root", "created_at": None,
        "workload": {"name": "report", "type": "process", "config": BODY["config"],
                     "priority": 0, "restart_policy": "never", "max_restarts": 3,
                     "max_runtime_seconds": None,
                     "requirements": {"cpu": 0.5, "gpu": 0, "memory": 268435456, "storage": 0}},
        "workloads": f"/api/workloads?schedule={schedule['id']}",
    }
    assert api.get(f"/api/schedules/{schedule['id']}").json()["next_runs"] == schedule["next_runs"]


def test_the_submit_body_with_a_schedule_creates_one_and_nicknames_read(api, clock):
    response = api.post("/api/workloads", BODY | {"schedule": "@hourly"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["next_runs"][:2] == ["2026-12-01T12:00:00Z", "2026-12-01T13:00:00Z"]
    assert Schedule.objects.count() == 1 and not Workload.objects.exists()


def tick() -> int:
    """A control-loop pass with the node alive (the clock jumps further than its heartbeats)."""
    node_heartbeat(node_id="local", usage={})
    return control.tick()["scheduled"]


def test_each_slot_runs_once_however_many_passes_see_it(api, clock):
    schedule = create(api, schedule="*/5 * * * *")
    assert tick() == 0  # 11:58:30: nothing due yet
    clock.move_to(at(12, 0))
    assert tick() == 1
    assert schedules_run_due() == 0 and tick() == 0
    clock.move_to(at(12, 4, ) + timedelta(seconds=59))
    assert schedules_run_due() == 0
    clock.move_to(at(12, 5))
    assert schedules_run_due() == 1
    assert runs(schedule["id"]) == [(at(12, 0), Outcome.STARTED), (at(12, 5), Outcome.STARTED)]
    first = Workload.objects.get(name="report-20261201T1200Z")
    assert first.status == WorkloadStatus.SCHEDULED and first.node.node_id == "local"
    assert first.config["env"] == {"A": "1", "CNET_SCHEDULE_ID": schedule["id"],
                                   "CNET_SCHEDULED_TIME": "2026-12-01T12:00:00+00:00"}
    assert first.cpu_millicores == 500 and first.memory_bytes == 268435456
    listed = api.get(f"/api/workloads?schedule={schedule['id']}").json()
    assert sorted(w["name"] for w in listed) == ["report-20261201T1200Z", "report-20261201T1205Z"]
    answer = api.get(f"/api/schedules/{schedule['id']}").json()
    assert answer["last_run"] == {"slot": "2026-12-01T12:05:00Z", "outcome": "started"}
    assert answer["next_runs"][0] == "2026-12-01T12:10:00Z"
    run_list = api.get(f"/api/schedules/{schedule['id']}/runs").json()
    assert [(r["slot"], r["outcome"], r["workload_name"]) for r in run_list] == [
        ("2026-12-01T12:05:00Z", "started", "report-20261201T1205Z"),
        ("2026-12-01T12:00:00Z", "started", "report-20261201T1200Z"),
    ]


def test_slots_missed_while_the_control_plane_was_away_run_within_the_deadline_else_are_recorded(api, clock):
    schedule = create(api, schedule="*/5 * * * *", starting_deadline_seconds=600)
    clock.move_to(at(13, 2))  # away from 11:58:30: slots 12:00 … 13:00; 12:55 and 13:00 are within 10 min
    assert tick() == 2
    recorded = runs(schedule["id"])
    assert [slot for slot, outcome in recorded if outcome == Outcome.MISSED] == [
        at(12, minute) for minute in range(0, 55, 5)]
    assert [slot for slot, outcome in recorded if outcome == Outcome.STARTED] == [at(12, 55), at(13, 0)]
    missed = ScheduleEvent.objects.get(schedule_id=schedule["id"], reason__startswith="missed")
    assert missed.reason.startswith("missed 11 run(s) from 2026-12-01T12:00:00+00:00 to 2026-12-01T12:50:00+00:00")
    assert "starting deadline (600 s)" in missed.reason
    assert missed.details == {"missed": 11, "more": False, "first": "2026-12-01T12:00:00+00:00",
                              "last": "2026-12-01T12:50:00+00:00"}
    assert tick() == 0 and len(runs(schedule["id"])) == 13
    events = [e["reason"] for e in api.get(f"/api/schedules/{schedule['id']}/events").json()]
    assert events[0].startswith("created: */5 * * * * (UTC)") and events[1] == missed.reason


def test_a_long_outage_of_a_frequent_schedule_records_a_bounded_number_of_missed_slots(api, clock):
    schedule = create(api, schedule="* * * * *", starting_deadline_seconds=60)
    clock.move_to(at(12, 0, day=3) + timedelta(seconds=30))  # two days: ~2,880 slots
    assert schedules_run_due() == 1  # 12:00 on day 3, within the minute's deadline
    assert ScheduleRun.objects.filter(schedule_id=schedule["id"], outcome=Outcome.MISSED).count() == 1000
    event = ScheduleEvent.objects.get(schedule_id=schedule["id"], reason__startswith="missed")
    assert event.reason.startswith("missed more than 1000 run(s)") and event.details["more"] is True
    assert runs(schedule["id"])[-1] == (at(12, 0, day=3), Outcome.STARTED)


def test_forbid_skips_a_slot_while_the_earlier_run_has_not_ended(api, clock):
    schedule = create(api, schedule="*/5 * * * *", concurrency_policy="forbid")
    clock.move_to(at(12, 0))
    assert schedules_run_due() == 1
    first = Workload.objects.get()
    workload_transition(workload_id=first.pk, to=WorkloadStatus.RUNNING)
    clock.move_to(at(12, 5))
    assert schedules_run_due() == 0
    skipped = ScheduleRun.objects.get(schedule_id=schedule["id"], slot=at(12, 5))
    assert skipped.outcome == Outcome.SKIPPED and skipped.workload is None
    assert "report-20261201T1200Z has not ended (concurrency policy forbid)" in skipped.reason
    workload_transition(workload_id=first.pk, to=WorkloadStatus.SUCCEEDED)
    clock.move_to(at(12, 10))
    assert schedules_run_due() == 1


def test_replace_stops_the_earlier_run_and_starts_the_new_one(api, clock):
    schedule = create(api, schedule="*/5 * * * *", concurrency_policy="replace")
    clock.move_to(at(12, 0))
    schedules_run_due()
    first = Workload.objects.get()  # scheduled: not started, so it ends at once
    clock.move_to(at(12, 5))
    assert schedules_run_due() == 1
    first.refresh_from_db()
    assert first.status == WorkloadStatus.STOPPED
    assert "replaced by the run of 2026-12-01T12:05:00+00:00" in first.reason
    second = Workload.objects.get(name="report-20261201T1205Z")
    assert second.status == WorkloadStatus.SCHEDULED
    assert ScheduleEvent.objects.filter(schedule_id=schedule["id"], reason__startswith="stopped report-").exists()


def test_allow_runs_alongside_an_earlier_run(api, clock):
    create(api, schedule="*/5 * * * *")
    clock.move_to(at(12, 0))
    schedules_run_due()
    clock.move_to(at(12, 5))
    schedules_run_due()
    assert set(Workload.objects.values_list("status", flat=True)) == {WorkloadStatus.SCHEDULED}
    assert Workload.objects.count() == 2


def test_a_paused_schedule_runs_nothing_and_resumes_from_the_next_slot(api, clock):
    schedule = create(api, schedule="*/5 * * * *", starting_deadline_seconds=3600)
    paused = api.post(f"/api/schedules/{schedule['id']}/pause").json()
    assert paused["paused"] is True and paused["next_runs"] == []
    assert api.post(f"/api/schedules/{schedule['id']}/pause").status_code == 409
    clock.move_to(at(12, 32))
    assert tick() == 0
    resumed = api.post(f"/api/schedules/{schedule['id']}/resume").json()
    assert resumed["paused"] is False and resumed["next_runs"][0] == "2026-12-01T12:35:00Z"
    assert api.post(f"/api/schedules/{schedule['id']}/resume").status_code == 409
    assert schedules_run_due() == 0  # the paused slots are neither run nor caught up
    clock.move_to(at(12, 35))
    assert schedules_run_due() == 1
    assert runs(schedule["id"]) == [(at(12, 35), Outcome.STARTED)]
    reasons = list(ScheduleEvent.objects.filter(schedule_id=schedule["id"]).values_list("reason", flat=True))
    assert reasons[1:] == ["paused by user", "resumed by user; next run at 2026-12-01T12:35:00+00:00"]


def test_a_run_refused_at_its_slot_is_recorded_and_the_schedule_goes_on(api, clock):
    schedule = create(api, schedule="*/5 * * * *", node="local")
    Node.objects.filter(node_id="local").delete()
    clock.move_to(at(12, 0))
    assert schedules_run_due() == 0
    refused = ScheduleRun.objects.get(schedule_id=schedule["id"])
    assert refused.outcome == Outcome.REFUSED and "local" in refused.reason
    assert Schedule.objects.get().next_run_at == at(12, 5)


def test_the_database_keeps_one_run_per_slot_whatever_writes_it(api):
    schedule = Schedule.objects.get(pk=create(api, schedule="@daily")["id"])
    ScheduleRun.objects.create(schedule=schedule, slot=at(12, 0), outcome=Outcome.MISSED)
    with pytest.raises(IntegrityError), transaction.atomic():
        ScheduleRun.objects.create(schedule=schedule, slot=at(12, 0), outcome=Outcome.STARTED)


def test_another_users_schedule_does_not_exist_for_them(api, user_api):
    schedule = create(api, schedule="@daily")
    assert user_api.get(f"/api/schedules/{schedule['id']}").status_code == 404
    assert user_api.post(f"/api/schedules/{schedule['id']}/pause").status_code == 404
    assert user_api.get("/api/schedules").json() == []


def test_delete_removes_the_schedule_and_keeps_the_workloads_it_started(api, clock):
    schedule = create(api, schedule="*/5 * * * *")
    clock.move_to(at(12, 0))
    schedules_run_due()
    assert api.delete(f"/api/schedules/{schedule['id']}").status_code == 204
    assert not Schedule.objects.exists() and not ScheduleRun.objects.exists()
    assert Workload.objects.count() == 1


BAD = [
    ("schedule", {"schedule": "61 * * * *"}),
    ("schedule", {"schedule": "every day"}),
    ("schedule", {"schedule": "0 0 30 2 *"}),
    ("schedule", {"schedule": "* * * * * *"}),
    ("schedule", {"schedule": 5}),
    ("timezone", {"schedule": "@daily", "timezone": "Mars/Olympus_Mons"}),
    ("timezone", {"schedule": "@daily", "timezone": "../../etc/passwd"}),
    ("concurrency_policy", {"schedule": "@daily", "concurrency_policy": "queue"}),
    ("starting_deadline_seconds", {"schedule": "@daily", "starting_deadline_seconds": 0}),
    ("starting_deadline_seconds", {"schedule": "@daily", "starting_deadline_seconds": -5}),
    ("starting_deadline_seconds", {"schedule": "@daily", "starting_deadline_seconds": 86_401}),
    ("count", {"schedule": "@daily", "count": 3}),
    ("depends_on", {"schedule": "@daily", "depends_on": []}),
    ("max_runtime_seconds", {"schedule": "@daily", "max_runtime_seconds": -1}),
    ("name", {"schedule": "@daily", "name": "x" * 250}),
    ("requirements", {"schedule": "@daily", "requirements": {"memory": 64 * GiB}}),
    ("strategy", {"schedule": "@daily", "strategy": "round_robin"}),
]


@pytest.mark.parametrize("field, fields", BAD, ids=[f"{f}={v}" for f, v in BAD])
@pytest.mark.parametrize("url", ["/api/schedules", "/api/workloads"])
def test_bad_input_is_400_naming_the_field_and_writes_nothing(api, url, field, fields):
    response = api.post(url, BODY | fields, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(field), response.json()
    assert not Schedule.objects.exists() and not ScheduleEvent.objects.exists()
    assert not Workload.objects.exists() and not WorkloadEvent.objects.exists()


def test_a_timezone_without_a_schedule_is_refused_by_name(api):
    response = api.post("/api/workloads", BODY | {"timezone": "UTC"}, format="json")
    assert response.status_code == 400 and response.json()["detail"].startswith("timezone")
    assert not Workload.objects.exists()
