"""Dependencies: a dependent waits pending, is placed the moment its conditions hold, and fails
naming the dependency when one never can. Graphs of several in one request."""

import copy
import uuid

import pytest

from tests.helpers import GiB, make_node
from workloads.models import (
    DependencyState,
    Workload,
    WorkloadArray,
    WorkloadDependency,
    WorkloadEvent,
    WorkloadStatus,
)
from workloads.services import workload_transition
from workloads.tests.api.seeds import EVERY_KIND, SEED_PROCESS

pytestmark = pytest.mark.django_db
S = WorkloadStatus


@pytest.fixture(autouse=True)
def local():
    return make_node("local", cpu=4, memory=8 * GiB, capabilities=EVERY_KIND)


def body(name="job", cpu=0.5, **changes):
    submission = copy.deepcopy(SEED_PROCESS)
    submission["requirements"] = {"cpu": cpu, "memory": GiB}
    return submission | {"name": name} | changes


def submit(api, **changes):
    response = api.post("/api/workloads", body(**changes), format="json")
    assert response.status_code == 201, response.content
    return response.json()


def run_to(workload_id, end):
    workload_transition(workload_id=workload_id, to=S.RUNNING)
    workload_transition(workload_id=workload_id, to=end)


def status(workload_id) -> Workload:
    return Workload.objects.get(pk=workload_id)


def test_a_dependent_waits_pending_and_is_placed_when_its_dependency_succeeds(api):
    first = submit(api, name="prep")
    second = submit(api, name="train", depends_on=[{"workload": first["id"], "condition": "succeeded"}])
    assert second["status"] == "pending"
    assert second["reason"] == f"waiting for prep ({first['id']}) to succeed"
    run_to(first["id"], S.SUCCEEDED)
    placed = status(second["id"])
    assert placed.status == S.SCHEDULED and placed.node.node_id == "local"
    deps = api.get(f"/api/workloads/{second['id']}/dependencies").json()
    assert deps["depends_on"] == [{"workload": first["id"], "kind": "workload", "name": "prep",
                                   "condition": "succeeded", "state": "met"}]
    assert api.get(f"/api/workloads/{first['id']}/dependencies").json()["dependents"][0]["workload"] == second["id"]


def test_a_dependent_whose_condition_can_never_hold_fails_naming_it_and_so_do_its_own(api):
    first = submit(api, name="prep")
    second = submit(api, name="train", depends_on=[{"workload": first["id"]}])  # succeeded by default
    third = submit(api, name="report", depends_on=[{"workload": second["id"], "condition": "succeeded"}])
    run_to(first["id"], S.FAILED)
    failed = status(second["id"])
    assert failed.status == S.FAILED and "prep" in failed.reason and first["id"] in failed.reason
    assert status(third["id"]).status == S.FAILED and "train" in status(third["id"]).reason


def test_failed_and_ended_conditions(api):
    first = submit(api, name="flaky")
    on_failure = submit(api, name="cleanup", depends_on=[{"workload": first["id"], "condition": "failed"}])
    after_any = submit(api, name="notify", depends_on=[{"workload": first["id"], "condition": "ended"}])
    run_to(first["id"], S.FAILED)
    assert status(on_failure["id"]).status == S.SCHEDULED
    assert status(after_any["id"]).status == S.SCHEDULED


def test_an_end_followed_by_a_restart_does_not_count(api):
    first = submit(api, name="retried", restart_policy="on-failure", max_restarts=1)
    second = submit(api, name="after", depends_on=[{"workload": first["id"], "condition": "succeeded"}])
    run_to(first["id"], S.FAILED)  # restarted: still to run
    assert status(second["id"]).status == S.PENDING
    run_to(first["id"], S.SUCCEEDED)
    assert status(second["id"]).status == S.SCHEDULED


def test_a_dependency_on_one_that_already_ended_is_decided_at_submit(api):
    first = submit(api, name="done")
    run_to(first["id"], S.SUCCEEDED)
    assert submit(api, depends_on=[{"workload": first["id"]}])["status"] == "scheduled"
    refused = submit(api, depends_on=[{"workload": first["id"], "condition": "failed"}])
    assert refused["status"] == "failed" and "done" in refused["reason"]


def test_all_conditions_must_hold(api):
    one, two = submit(api, name="one"), submit(api, name="two")
    both = submit(api, name="both", depends_on=[{"workload": one["id"]}, {"workload": two["id"]}])
    run_to(one["id"], S.SUCCEEDED)
    waiting = status(both["id"])
    assert waiting.status == S.PENDING and waiting.reason == f"waiting for two ({two['id']}) to succeed"
    run_to(two["id"], S.SUCCEEDED)
    assert status(both["id"]).status == S.SCHEDULED


def test_a_dependency_on_an_array_waits_for_every_instance(api):
    array = submit(api, name="sweep", cpu=0.1, count=3)
    after = submit(api, name="gather", depends_on=[{"workload": array["id"], "condition": "succeeded"}])
    assert after["reason"] == f"waiting for array sweep ({array['id']}) to succeed"
    instances = list(Workload.objects.filter(array_id=array["id"]).order_by("array_index"))
    for workload in instances[:2]:
        run_to(workload.pk, S.SUCCEEDED)
        assert status(after["id"]).status == S.PENDING
    run_to(instances[2].pk, S.SUCCEEDED)
    assert status(after["id"]).status == S.SCHEDULED


def test_one_failed_instance_fails_what_waits_for_the_array_to_succeed_at_once(api):
    array = submit(api, name="sweep", cpu=0.1, count=3)
    after = submit(api, name="gather", depends_on=[{"workload": array["id"]}])
    run_to(Workload.objects.get(array_id=array["id"], array_index=1).pk, S.FAILED)
    assert status(after["id"]).status == S.FAILED and "sweep" in status(after["id"]).reason


def test_an_array_that_depends_waits_whole_and_is_placed_in_one_batch(api):
    first = submit(api, name="prep")
    array = submit(api, name="sweep", cpu=0.1, count=4, depends_on=[{"workload": first["id"]}])
    assert array["counts"]["pending"] == 4
    assert set(Workload.objects.filter(array_id=array["id"]).values_list("reason", flat=True)) == {
        f"waiting for prep ({first['id']}) to succeed"}
    run_to(first["id"], S.SUCCEEDED)
    assert api.get(f"/api/arrays/{array['id']}").json()["counts"]["scheduled"] == 4


def test_stopping_a_dependency_decides_its_dependents(api):
    first = submit(api, name="prep")
    needs_success = submit(api, name="a", depends_on=[{"workload": first["id"]}])
    needs_end = submit(api, name="b", depends_on=[{"workload": first["id"], "condition": "ended"}])
    assert api.post(f"/api/workloads/{first['id']}/stop").status_code == 200
    assert status(needs_success["id"]).status == S.FAILED
    assert status(needs_end["id"]).status == S.SCHEDULED


def test_deleting_a_dependency_decides_its_dependents_first(api):
    first = submit(api, name="prep")
    dependent = submit(api, name="a", depends_on=[{"workload": first["id"]}])
    assert api.delete(f"/api/workloads/{first['id']}").status_code == 204
    assert status(dependent["id"]).status == S.FAILED


# --- graphs: several in one request ---------------------------------------------------------
def test_a_graph_is_recorded_in_one_request_with_local_keys(api):
    graph = {"workloads": [
        body("report", key="report", depends_on=[{"workload": "train"}, {"workload": "sweep", "condition": "ended"}]),
        body("prep", key="prep"),
        body("train", key="train", depends_on=[{"workload": "prep"}]),
        body("sweep", key="sweep", cpu=0.1, count=3, depends_on=[{"workload": "prep"}]),
    ]}
    response = api.post("/api/workloads", graph, format="json")
    assert response.status_code == 201, response.content
    answers = response.json()["workloads"]
    assert [(a["key"], a["kind"]) for a in answers] == [
        ("report", "workload"), ("prep", "workload"), ("train", "workload"), ("sweep", "array")]
    report, prep, train, sweep = answers
    assert prep["status"] == "scheduled" and train["status"] == "pending" and report["status"] == "pending"
    run_to(prep["id"], S.SUCCEEDED)
    assert status(train["id"]).status == S.SCHEDULED
    assert api.get(f"/api/arrays/{sweep['id']}").json()["counts"]["scheduled"] == 3
    run_to(train["id"], S.SUCCEEDED)
    assert status(report["id"]).status == S.PENDING  # still waiting for the sweep to end
    for workload in Workload.objects.filter(array_id=sweep["id"]):
        run_to(workload.pk, S.FAILED)
    assert status(report["id"]).status == S.SCHEDULED


def nothing_written():
    return not (Workload.objects.exists() or WorkloadArray.objects.exists() or WorkloadDependency.objects.exists()
                or WorkloadEvent.objects.exists())


def test_a_cycle_is_refused_naming_the_field_and_nothing_is_written(api):
    graph = {"workloads": [
        body("a", key="a", depends_on=[{"workload": "c"}]),
        body("b", key="b", depends_on=[{"workload": "a"}]),
        body("c", key="c", depends_on=[{"workload": "b"}]),
    ]}
    response = api.post("/api/workloads", graph, format="json")
    assert response.status_code == 400, response.content
    detail = response.json()["detail"]
    assert detail.startswith("workloads[") and "depends_on" in detail and "cycle" in detail
    assert nothing_written()


def test_a_workload_that_names_itself_is_a_cycle(api):
    response = api.post("/api/workloads", {"workloads": [body("a", key="a", depends_on=[{"workload": "a"}])]},
                        format="json")
    assert response.status_code == 400 and "cycle" in response.json()["detail"]
    assert nothing_written()


def test_a_bad_item_late_in_a_graph_writes_nothing_of_the_earlier_ones(api):
    graph = {"workloads": [body("a", key="a"), body("b", depends_on=[{"workload": "a"}],
                                                   requirements={"cpu": 1, "memory": 64 * GiB})]}
    response = api.post("/api/workloads", graph, format="json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("workloads[1].requirements")
    assert nothing_written()


def test_a_repeated_key_is_refused(api):
    graph = {"workloads": [body("a", key="a"), body("b", key="a")]}
    response = api.post("/api/workloads", graph, format="json")
    assert response.status_code == 400 and "workloads[1].key" in response.json()["detail"]
    assert nothing_written()


@pytest.mark.parametrize("depends_on, named", [
    ([{"workload": str(uuid.UUID(int=7))}], "depends_on[0].workload"),
    ([{"workload": "not-an-id"}], "depends_on[0].workload"),
    ([{"workload": 5}], "depends_on.0.workload"),
    ([{"workload": "x", "condition": "maybe"}], "condition"),
    ([{"workload": "x", "when": "now"}], "when"),
    ("prep", "depends_on"),
])
def test_bad_dependencies_are_400_naming_the_field_and_write_nothing(api, depends_on, named):
    response = api.post("/api/workloads", body(depends_on=depends_on), format="json")
    assert response.status_code == 400, response.content
    assert named in response.json()["detail"] or named.replace(".0.", "[0].") in response.json()["detail"]
    assert nothing_written()


def test_another_owners_workload_is_unknown_as_a_dependency(api, user_api):
    theirs = submit(api, name="root's")
    response = user_api.post("/api/workloads", body(depends_on=[{"workload": theirs["id"]}]), format="json")
    assert response.status_code == 400 and "depends_on[0].workload" in response.json()["detail"]
    assert Workload.objects.count() == 1 and not WorkloadDependency.objects.exists()


def test_a_dependency_named_twice_is_refused(api):
    first = submit(api, name="prep")
    response = api.post("/api/workloads", body(depends_on=[{"workload": first["id"]}, {"workload": first["id"]}]),
                        format="json")
    assert response.status_code == 400 and "depends_on[1].workload" in response.json()["detail"]
    assert Workload.objects.count() == 1


def test_settled_states_are_recorded_once(api):
    first = submit(api, name="prep")
    submit(api, name="a", depends_on=[{"workload": first["id"]}])
    run_to(first["id"], S.SUCCEEDED)
    assert list(WorkloadDependency.objects.values_list("state", flat=True)) == [DependencyState.MET]
