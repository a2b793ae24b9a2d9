"""POST /api/workloads/plan: the decision a submission now would record, with nothing written."""

import copy
from datetime import timedelta

import pytest
from django.utils import timezone

from nodes.models import Node
from nodes.resources import Resources
from scheduler.plan import Release, expected_room
from tests.helpers import GiB, make_node, submit_process
from workloads.models import EventKind, Workload, WorkloadEvent

from .seeds import SEED_PROCESS

pytestmark = pytest.mark.django_db


def body(**changes) -> dict:
    return copy.deepcopy(SEED_PROCESS) | changes


def allocations() -> list[tuple]:
    return list(Node.objects.order_by("node_id").values_list(
        "node_id", "cpu_allocated_millicores", "memory_allocated_bytes", "gpu_allocated", "storage_allocated_bytes"))


def plan_then_submit(api, request: dict) -> tuple[dict, Workload, WorkloadEvent]:
    before = (allocations(), Workload.objects.count(), WorkloadEvent.objects.count())
    response = api.post("/api/workloads/plan", request, format="json")
    assert response.status_code == 200, response.content
    assert (allocations(), Workload.objects.count(), WorkloadEvent.objects.count()) == before  # nothing written
    submitted = api.post("/api/workloads", request, format="json")
    assert submitted.status_code == 201, submitted.content
    workload = Workload.objects.select_related("node").get(pk=submitted.json()["id"])
    placement = workload.events.get(kind=EventKind.PLACEMENT)
    return response.json(), workload, placement


@pytest.fixture
def tree():
    """local (full for a 1-CPU request) → child-a (too little memory) and child-b (room), and a peer."""
    make_node("local", cpu=0.5, memory=8 * GiB)
    make_node("child-a", cpu=4, memory=GiB // 4, parent="local")
    make_node("child-b", cpu=4, memory=8 * GiB, parent="local")
    make_node("peer", cpu=16, memory=64 * GiB, peers=("local",))


@pytest.mark.parametrize("strategy", ["default", "best_fit"])
def test_a_plan_names_the_node_and_every_reason_a_submission_then_records(api, tree, strategy):
    plan, workload, placement = plan_then_submit(api, body(strategy=strategy))
    assert plan["outcome"] == "placed" and plan["node"] == workload.node.node_id
    assert plan["reasons"] == placement.details and plan["summary"] == placement.reason
    assert {reason["node"] for reason in plan["reasons"]} >= {"local", workload.node.node_id}
    assert plan["queue"] is None and plan["never_fits"] is None


def test_a_request_that_would_wait_gets_its_queue_place_and_the_reasons_it_then_records(api, tree):
    for node in ("child-a", "child-b", "peer"):
        Node.objects.filter(node_id=node).update(status="unhealthy")
    waiting = [submit_process(name=f"queued-{i}", cpu=1) for i in range(2)]
    submit_process(name="urgent", cpu=1, priority=5)
    assert all(w.status == "pending" for w in waiting)

    plan, workload, placement = plan_then_submit(api, body())
    assert plan["outcome"] == "waits" and plan["node"] is None
    assert plan["queue"] == {"priority": 0, "position": 3, "of": 3, "ahead": 3}
    assert plan["estimated_start"] == "unknown"  # no running work has a time limit
    assert workload.status == "pending"
    assert plan["reasons"] == placement.details and plan["summary"] == placement.reason


def test_a_request_that_would_wait_expects_room_when_the_running_work_reaches_its_time_limit(api, tree):
    for node in ("child-a", "child-b", "peer"):
        Node.objects.filter(node_id=node).update(status="unhealthy")
    Node.objects.filter(node_id="local").update(cpu_millicores=1000)
    running = submit_process(name="limited", cpu=1, max_runtime_seconds=600)
    started = timezone.now() - timedelta(seconds=100)
    Workload.objects.filter(pk=running.pk).update(status="running", started_at=started)

    plan = api.post("/api/workloads/plan", body(), format="json").json()
    assert plan["outcome"] == "waits"
    assert plan["estimated_start"] == (started + timedelta(seconds=600)).isoformat()
    Workload.objects.filter(pk=running.pk).update(max_runtime_seconds=None)
    assert api.post("/api/workloads/plan", body(), format="json").json()["estimated_start"] == "unknown"


def test_a_request_no_node_could_ever_hold_names_the_largest_node_and_what_it_lacks(api, tree):
    response = api.post("/api/workloads/plan", body(requirements={"cpu": 64, "memory": GiB}), format="json")
    assert response.status_code == 200
    plan = response.json()
    assert plan["outcome"] == "never"
    assert plan["never_fits"]["node"] == "peer"
    assert plan["never_fits"]["short"] == ["needs 64 CPU, 16 CPU free"]
    refused = api.post("/api/workloads", body(requirements={"cpu": 64, "memory": GiB}), format="json")
    assert refused.status_code == 400 and "peer" in refused.json()["detail"]


def test_a_request_with_dependencies_waits_for_them_and_says_where_it_would_go_then(api, tree):
    first = submit_process(name="first", cpu=1)
    response = api.post("/api/workloads/plan", body(depends_on=[{"workload": str(first.pk)}]), format="json")
    assert response.status_code == 200, response.content
    plan = response.json()
    assert (plan["outcome"], plan["node"], plan["estimated_start"]) == ("waits", None, "unknown")
    assert plan["summary"].startswith("waits for its dependencies first; then, as things stand: placed on")
    assert plan["reasons"][-1]["fits"]


@pytest.mark.parametrize(("change", "field"), [
    ({"requirements": {"cpu": -1}}, "requirements.cpu"),
    ({"strategy": "nearest_moon"}, "strategy"),
    ({"node": "nowhere"}, "node"),
    ({"config": {}}, "config.command"),
])
def test_bad_input_is_refused_naming_the_field_as_a_submission_is(api, tree, change, field):
    response = api.post("/api/workloads/plan", body(**change), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(f"{field}:")
    assert not Workload.objects.exists()


def test_a_plan_needs_a_login(client, tree):
    assert client.post("/api/workloads/plan", body(), content_type="application/json").status_code in (401, 403)


def test_the_plan_endpoint_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/workloads/plan/"]["post"]
    assert operation["operationId"] == "workloads_plan"
    assert "Plan" in schema["components"]["schemas"]


def test_room_is_expected_when_enough_time_limited_work_has_ended(db):
    node = make_node("busy", cpu=2, memory=4 * GiB)
    Node.objects.filter(pk=node.pk).update(cpu_allocated_millicores=2000, memory_allocated_bytes=4 * GiB)
    now = timezone.now()
    half = Resources(cpu=1000, memory=2 * GiB)
    releases = [Release(node.pk, half, now + timedelta(minutes=30)), Release(node.pk, half, now + timedelta(minutes=5))]

    def on(limits):
        return lambda node_pks: [release for release in limits if release.node_pk in node_pks]

    one_cpu = Resources(cpu=1000, memory=GiB)
    assert expected_room(requirements=one_cpu, node_ids=["busy"], capability=None, releases_on=on(releases)) \
        == now + timedelta(minutes=5)
    two_cpus = Resources(cpu=2000, memory=GiB)
    assert expected_room(requirements=two_cpus, node_ids=["busy"], capability=None, releases_on=on(releases)) \
        == now + timedelta(minutes=30)
    # Work with no time limit may never end: the room it holds is not counted on.
    no_limit = [releases[1], Release(node.pk, half, None)]
    assert expected_room(requirements=two_cpus, node_ids=["busy"], capability=None, releases_on=on(no_limit)) is None
