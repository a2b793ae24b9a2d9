"""Arrays: "count": N in POST /api/workloads makes N instances in one request, placed in batches."""

import copy

import pytest
from django.db.models import Count

from nodes.models import Node
from tests.helpers import GiB, make_node
from workloads.models import (
    EventKind,
    Workload,
    WorkloadArray,
    WorkloadArrayEvent,
    WorkloadEvent,
    WorkloadStatus,
)
from workloads.services import workload_transition, workloads_place_pending
from workloads.tests.api.seeds import EVERY_KIND, SEED_PROCESS

pytestmark = pytest.mark.django_db
S = WorkloadStatus


def array_body(count, *, cpu=1.0, memory=GiB, args=("task-{index}", "x"), **changes):
    body = copy.deepcopy(SEED_PROCESS)
    body["config"]["args"] = list(args)
    body["requirements"] = {"cpu": cpu, "memory": memory}
    return body | {"count": count, "name": "sweep"} | changes


@pytest.fixture
def local():
    return make_node("local", cpu=4, memory=8 * GiB, capabilities=EVERY_KIND)


def submit_array(api, count, **changes):
    response = api.post("/api/workloads", array_body(count, **changes), format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_count_makes_n_named_instances_with_their_index_in_env_and_args(api, local):
    body = submit_array(api, 3, cpu=0.5)
    assert body["count"] == 3 and body["counts"]["total"] == 3 and body["counts"]["scheduled"] == 3
    instances = list(Workload.objects.filter(array_id=body["id"]).order_by("array_index"))
    assert [w.name for w in instances] == ["sweep-0", "sweep-1", "sweep-2"]
    for index, workload in enumerate(instances):
        assert workload.config["env"] == {"TEST": "value", "CNET_ARRAY_ID": body["id"], "CNET_ARRAY_INDEX": str(index)}
        assert workload.config["args"] == [f"task-{index}", "x"]
        assert workload.status == S.SCHEDULED and workload.node.node_id == "local"


def test_batched_placement_claims_one_update_per_node_and_one_reason_row_per_batch(
        api, local, django_assert_max_num_queries):
    make_node("child", parent="local", cpu=4, memory=8 * GiB, capabilities=EVERY_KIND)
    body = array_body(100, cpu=0.05, memory=64 * 1024**2)  # 80 fit on local (cpu), the rest on child
    # A fixed number of statements whatever the count: not one per instance.
    with django_assert_max_num_queries(40):
        response = api.post("/api/workloads", body, format="json")
    assert response.status_code == 201, response.content
    array_id = response.json()["id"]
    by_node = dict(Workload.objects.filter(array_id=array_id).order_by().values_list("node__node_id")
                   .annotate(n=Count("pk")))
    assert by_node == {"local": 80, "child": 20}
    assert Node.objects.get(node_id="local").cpu_allocated_millicores == 4000
    assert Node.objects.get(node_id="child").cpu_allocated_millicores == 1000
    batch = WorkloadArrayEvent.objects.get(array_id=array_id)
    assert batch.placed == 100 and [d["instances"] for d in batch.details if d["fits"]] == [80, 20]
    # No per-node placement rows per instance: each instance has its submitted and scheduled moves only.
    assert not WorkloadEvent.objects.filter(workload__array_id=array_id, kind=EventKind.PLACEMENT).exists()
    assert WorkloadEvent.objects.filter(workload__array_id=array_id).count() == 200


def test_instances_that_do_not_fit_wait_and_are_placed_in_a_batch_when_room_frees(api, local):
    body = submit_array(api, 6, cpu=1.0)
    assert body["counts"]["scheduled"] == 4 and body["counts"]["pending"] == 2
    waiting = Workload.objects.filter(array_id=body["id"], status=S.PENDING)
    assert all("2 wait, no node fits now" in w.reason for w in waiting)
    for workload in Workload.objects.filter(array_id=body["id"], status=S.SCHEDULED)[:2]:
        workload_transition(workload_id=workload.pk, to=S.RUNNING)
        workload_transition(workload_id=workload.pk, to=S.SUCCEEDED)
    assert workloads_place_pending() == 2
    counts = api.get(f"/api/arrays/{body['id']}").json()["counts"]
    assert counts["scheduled"] == 4 and counts["succeeded"] == 2 and counts["pending"] == 0


def test_each_instance_retries_by_its_own_policy(api, local):
    body = submit_array(api, 2, restart_policy="on-failure", max_restarts=1)
    first, second = Workload.objects.filter(array_id=body["id"]).order_by("array_index")
    for workload in (first, second):
        workload_transition(workload_id=workload.pk, to=S.RUNNING)
    workload_transition(workload_id=first.pk, to=S.FAILED)
    workload_transition(workload_id=second.pk, to=S.SUCCEEDED)
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == S.SCHEDULED and first.restart_count == 1  # restarted and placed again
    assert second.status == S.SUCCEEDED


def test_array_resource_lists_filters_and_counts(api, local):
    body = submit_array(api, 5, cpu=0.1)
    submit_array(api, 2, cpu=0.1, name="other")
    listed = api.get("/api/arrays").json()
    assert [a["name"] for a in listed] == ["other", "sweep"]
    assert listed[1]["counts"]["scheduled"] == 5 and listed[1]["status"] == "scheduled"
    instances = api.get(f"/api/workloads?array={body['id']}").json()
    assert len(instances) == 5 and {w["array"] for w in instances} == {body["id"]}
    one = api.get(f"/api/workloads?array={body['id']}&array_index=3").json()
    assert [w["name"] for w in one] == ["sweep-3"]
    assert api.get("/api/workloads?array=not-a-uuid").status_code == 400


def test_stop_of_the_array_ends_what_has_not_started_and_asks_running_ones(api, local):
    body = submit_array(api, 6, cpu=1.0)  # 4 scheduled, 2 pending
    running = Workload.objects.filter(array_id=body["id"], status=S.SCHEDULED).first()
    workload_transition(workload_id=running.pk, to=S.RUNNING)
    answer = api.post(f"/api/arrays/{body['id']}/stop")
    assert answer.status_code == 200, answer.content
    assert answer.json()["counts"]["stopped"] == 5 and answer.json()["counts"]["running"] == 1
    running.refresh_from_db()
    assert running.stop_requested_at is not None
    local.refresh_from_db()
    assert local.cpu_allocated_millicores == 1000  # only the running one still holds room
    workload_transition(workload_id=running.pk, to=S.STOPPED)
    assert api.post(f"/api/arrays/{body['id']}/stop").status_code == 409
    assert WorkloadArrayEvent.objects.filter(array_id=body["id"], reason__startswith="stop requested").exists()


def test_one_index_is_stopped_and_deleted_by_its_own_endpoints(api, local):
    body = submit_array(api, 3, cpu=0.1)
    one = api.get(f"/api/workloads?array={body['id']}&array_index=1").json()[0]
    assert api.post(f"/api/workloads/{one['id']}/stop").json()["status"] == "stopped"
    assert api.delete(f"/api/workloads/{one['id']}").status_code == 204
    counts = api.get(f"/api/arrays/{body['id']}").json()["counts"]
    assert counts["total"] == 2 and counts["scheduled"] == 2


def test_delete_of_the_array_frees_everything_and_removes_its_instances(api, local):
    body = submit_array(api, 6, cpu=1.0)
    assert api.delete(f"/api/arrays/{body['id']}").status_code == 204
    assert not WorkloadArray.objects.exists() and not Workload.objects.exists()
    local.refresh_from_db()
    assert local.cpu_allocated_millicores == 0 and local.memory_allocated_bytes == 0


def test_another_users_array_does_not_exist_for_them(api, user_api, local):
    body = submit_array(api, 2, cpu=0.1)
    assert user_api.get(f"/api/arrays/{body['id']}").status_code == 404
    assert user_api.post(f"/api/arrays/{body['id']}/stop").status_code == 404
    assert user_api.get("/api/arrays").json() == []
    assert user_api.get(f"/api/workloads?array={body['id']}").json() == []


def test_the_array_list_costs_the_same_queries_whatever_its_length(api, local, django_assert_max_num_queries):
    first = submit_array(api, 2, cpu=0.1, name="first")
    submit_array(api, 2, cpu=0.1, name="after", depends_on=[{"workload": first["id"], "condition": "succeeded"}])
    with django_assert_max_num_queries(20) as few:
        listed = api.get("/api/arrays").json()
    budget = len(few.captured_queries)  # read now: the next request clears the connection's log
    assert [(a["name"], [d["workload"] for d in a["depends_on"]]) for a in listed] == [
        ("after", [first["id"]]), ("first", [])]
    for index in range(6):
        submit_array(api, 2, cpu=0.1, name=f"more-{index}", depends_on=[{"workload": first["id"]}])
    with django_assert_max_num_queries(budget):
        listed = api.get("/api/arrays").json()
    assert len(listed) == 8 and all(a["depends_on"] for a in listed if a["name"] != "first")


@pytest.mark.parametrize("count", [0, -1, 100_001, "3", 2.5, True])
def test_count_out_of_range_or_not_an_integer_is_400_naming_it_and_writes_nothing(api, local, count):
    response = api.post("/api/workloads", array_body(count), format="json")
    assert response.status_code == 400, response.content
    assert "count" in response.json()["detail"]
    assert not Workload.objects.exists() and not WorkloadArray.objects.exists() and not WorkloadEvent.objects.exists()


def test_an_array_no_node_could_ever_hold_is_refused_whole(api, local):
    response = api.post("/api/workloads", array_body(10, memory=64 * GiB), format="json")
    assert response.status_code == 400 and response.json()["detail"].startswith("requirements:")
    assert not Workload.objects.exists() and not WorkloadArray.objects.exists()


def test_a_name_too_long_for_its_indices_is_refused(api, local):
    response = api.post("/api/workloads", array_body(1000, name="n" * 252), format="json")
    assert response.status_code == 400 and "name" in response.json()["detail"]
    assert not WorkloadArray.objects.exists()
