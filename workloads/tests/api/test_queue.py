"""Pending work explains itself: a pending workload's answer carries its queue place, its estimated
start and why it waits, as a plan of the same request would answer, and they move with the queue."""

import copy
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from tests.helpers import GiB, make_node, submit_process
from workloads.models import Workload
from workloads.services import workload_transition, workloads_place_pending

from .seeds import SEED_PROCESS

pytestmark = pytest.mark.django_db


@pytest.fixture
def local():
    """One CPU, taken by a running workload with no time limit: what is submitted next waits."""
    make_node("local", cpu=1, memory=8 * GiB)
    holder = submit_process(name="holder", cpu=1)
    Workload.objects.filter(pk=holder.pk).update(status="running", started_at=timezone.now())
    return holder


def queue(api, workload) -> dict | None:
    answer = api.get(f"/api/workloads/{workload.pk}")
    assert answer.status_code == 200, answer.content
    return answer.json()["queue"]


def test_the_queue_place_moves_as_the_work_ahead_is_stopped_or_placed(api, local):
    first, second, third = (submit_process(name=name, cpu=1) for name in ("first", "second", "third"))
    assert queue(api, third) | {"reason": ""} == {"priority": 0, "position": 3, "of": 3, "ahead": 2,
                                                  "estimated_start": "unknown", "reason": ""}
    assert queue(api, third)["reason"].startswith("no node fits now") and "local: needs 1 CPU" in \
        queue(api, third)["reason"]

    assert api.post(f"/api/workloads/{first.pk}/stop").status_code == 200
    assert (queue(api, second)["position"], queue(api, third)["position"], queue(api, third)["of"]) == (1, 2, 2)
    assert queue(api, first) is None  # stopped: not in the queue

    assert workload_transition(workload_id=local.pk, to="succeeded", reason="ended")
    assert workloads_place_pending() == 1  # second, the oldest, takes the CPU
    assert queue(api, second) is None and queue(api, local) is None
    assert (queue(api, third)["position"], queue(api, third)["of"], queue(api, third)["ahead"]) == (1, 1, 0)

    # Higher priority goes first: it is ahead, though it is not of the same level.
    urgent = submit_process(name="urgent", cpu=1, priority=5)
    assert queue(api, third) | {"reason": ""} == {"priority": 0, "position": 1, "of": 1, "ahead": 1,
                                                  "estimated_start": "unknown", "reason": ""}
    assert (queue(api, urgent)["position"], queue(api, urgent)["ahead"]) == (1, 0)


def test_the_estimated_start_is_when_running_work_reaches_its_time_limit_else_unknown(api, local):
    started = timezone.now() - timedelta(seconds=100)
    Workload.objects.filter(pk=local.pk).update(max_runtime_seconds=600, started_at=started)
    waiting = submit_process(name="waiting", cpu=1)
    assert queue(api, waiting)["estimated_start"] == (started + timedelta(seconds=600)).isoformat()

    # Past the limit (its agent is about to stop it), room is expected now, not in the past.
    with time_machine.travel(started + timedelta(seconds=700), tick=False):
        assert queue(api, waiting)["estimated_start"] == timezone.now().isoformat()

    # A second holder with no time limit: the first's end does not make room for a whole CPU.
    Workload.objects.filter(pk=local.pk).update(cpu_millicores=500)
    other = submit_process(name="unlimited", cpu=0.5)
    Workload.objects.filter(pk=other.pk).update(status="running", node=local.node, started_at=timezone.now())
    assert queue(api, waiting)["estimated_start"] == "unknown"


def test_a_submission_waits_where_its_plan_said(api, local):
    submit_process(name="before", cpu=1)
    body = copy.deepcopy(SEED_PROCESS) | {"requirements": {"cpu": 1, "memory": GiB}}
    plan = api.post("/api/workloads/plan", body, format="json").json()
    submitted = api.post("/api/workloads", body, format="json").json()
    assert submitted["status"] == "pending"
    assert submitted["queue"] == plan["queue"] | {"estimated_start": plan["estimated_start"],
                                                  "reason": plan["summary"]}
    assert submitted["queue"]["position"] == 2


def test_work_waiting_for_its_dependencies_has_no_place_yet_and_says_why(api, local, admin_user):
    before = submit_process(name="before", cpu=1)
    after = submit_process(name="after", cpu=0.1, owner=admin_user,
                           depends_on=[{"workload": str(before.pk), "condition": "succeeded"}])
    waiting = queue(api, after)
    assert (waiting["position"], waiting["of"], waiting["estimated_start"]) == (None, None, "unknown")
    assert waiting["reason"] == f"waiting for before ({before.pk}) to succeed"
    assert queue(api, before)["position"] == 1  # the one waited on is queued; the dependent is not counted


def test_the_list_shows_each_rows_place_in_a_constant_number_of_queries(api, local, django_assert_max_num_queries):
    submit_process(name="urgent", cpu=1, priority=5)
    for index in range(3):
        submit_process(name=f"p-{index}", cpu=1)
    with django_assert_max_num_queries(10) as few:
        rows = api.get("/api/workloads?status=pending").json()
    assert [(row["name"], row["queue"]["position"], row["queue"]["ahead"]) for row in rows] == [
        ("p-2", 3, 3), ("p-1", 2, 2), ("p-0", 1, 1), ("urgent", 1, 0)]
    for index in range(3, 30):
        submit_process(name=f"p-{index}", cpu=1)
    with django_assert_max_num_queries(len(few.captured_queries)):
        rows = api.get("/api/workloads?status=pending").json()
    assert len(rows) == 31 and rows[0]["queue"]["position"] == 30 and rows[0]["queue"]["of"] == 30
    assert all(row["queue"] == queue(api, Workload(pk=row["id"])) for row in rows[:3])
