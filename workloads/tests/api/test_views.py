"""The seed's /api/workloads: each seed curl body, the detail routes, paging, filters, ownership."""

import copy

import pytest

from nodes.resources import MILLICORES_PER_CORE
from tests.helpers import GiB, make_node
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_logs_append, workload_transition

from .seeds import EVERY_KIND, SEED_CONTAINER, SEED_MLMODEL, SEED_PROCESS

pytestmark = pytest.mark.django_db



@pytest.fixture
def local():
    return make_node("local", cpu=4, memory=8 * GiB, capabilities=EVERY_KIND)


def create(client, body=None, **changes):
    body = copy.deepcopy(body or SEED_PROCESS) | changes
    response = client.post("/api/workloads", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.parametrize("seed", [SEED_PROCESS, SEED_CONTAINER, SEED_MLMODEL], ids=["process", "container", "mlmodel"])
def test_each_seed_body_is_accepted_with_its_fields(api, local, seed):
    response = api.post("/api/workloads", seed, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == seed["name"] and body["type"] == seed["type"]
    assert body["requirements"]["cpu"] == seed["requirements"]["cpu"]
    assert body["requirements"]["memory"] == seed["requirements"]["memory"]
    for key, value in seed["config"].items():
        assert body["config"][key] == value
    assert body["status"] == "scheduled" and body["node"] == "local"
    assert body["owner"] == "root"
    stored = Workload.objects.get(pk=body["id"])
    assert stored.cpu_millicores == round(seed["requirements"]["cpu"] * MILLICORES_PER_CORE)


def test_list_is_a_plain_json_array_newest_first(api, local):
    first = create(api, name="one")
    second = create(api, name="two")
    response = api.get("/api/workloads")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert [w["id"] for w in body] == [second["id"], first["id"]]


@pytest.mark.parametrize("slash", ["", "/"])
def test_every_seed_path_works_with_and_without_a_trailing_slash(api, local, slash):
    assert api.post(f"/api/workloads{slash}", SEED_PROCESS, format="json").status_code == 201
    workload_id = api.get(f"/api/workloads{slash}").json()[0]["id"]
    base = f"/api/workloads/{workload_id}"
    assert api.get(f"{base}{slash}").status_code == 200
    assert api.get(f"{base}/logs{slash}?lines=5").status_code == 200
    assert api.post(f"{base}/stop{slash}").status_code == 200
    assert api.delete(f"{base}{slash}").status_code == 204
    for path in ("/api/resources", "/api/resources/stats", "/api/nodes", "/api/health"):
        assert api.get(f"{path}{slash}").status_code == 200, path


def test_get_one_workload(api, local):
    created = create(api)
    body = api.get(f"/api/workloads/{created['id']}").json()
    assert body["id"] == created["id"] and body["config"]["env"] == {"TEST": "value"}
    assert api.get("/api/workloads/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/api/workloads/not-a-uuid").status_code == 404


def test_delete_removes_the_workload_and_frees_its_resources(api, local):
    created = create(api)
    assert api.delete(f"/api/workloads/{created['id']}").status_code == 204
    assert not Workload.objects.filter(pk=created["id"]).exists()
    local.refresh_from_db()
    assert local.cpu_allocated_millicores == 0 and local.memory_allocated_bytes == 0
    assert api.get(f"/api/workloads/{created['id']}").status_code == 404


def test_stop_ends_a_scheduled_workload_and_refuses_a_finished_one(api, local):
    created = create(api)
    response = api.post(f"/api/workloads/{created['id']}/stop")
    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    local.refresh_from_db()
    assert local.cpu_allocated_millicores == 0
    again = api.post(f"/api/workloads/{created['id']}/stop")
    assert again.status_code == 409
    assert "stopped" in again.json()["detail"]


def test_logs_return_the_last_n_lines(api, local):
    created = create(api)
    workload_logs_append(workload_id=created["id"], chunks=[
        (0, "stdout", "one\ntwo\n"), (1, "stdout", "three\n"), (2, "stderr", "four\nfive\n"),
    ])
    body = api.get(f"/api/workloads/{created['id']}/logs?lines=3").json()
    assert body["lines"] == ["three", "four", "five"]
    assert body["logs"] == "three\nfour\nfive"
    assert api.get(f"/api/workloads/{created['id']}/logs").json()["lines"] == ["one", "two", "three", "four", "five"]
    bad = api.get(f"/api/workloads/{created['id']}/logs?lines=-1")
    assert bad.status_code == 400 and "lines" in bad.json()["detail"]


def test_paging_keeps_a_plain_array_and_says_the_rest_in_headers(api, local):
    ids = [create(api, name=f"w{i}", requirements={"cpu": 0.1, "memory": 1024})["id"] for i in range(5)]
    response = api.get("/api/workloads?limit=2&offset=1&ordering=created_at")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert [w["id"] for w in body] == ids[1:3]
    assert response["X-Total-Count"] == "5"
    link = response["Link"]
    assert 'rel="next"' in link and 'rel="prev"' in link and 'rel="first"' in link
    assert "offset=3" in link and "limit=2" in link
    last = api.get("/api/workloads?limit=2&offset=4")
    assert len(last.json()) == 1 and 'rel="next"' not in last["Link"]


def test_filters_by_status_type_node_and_name(api, local):
    make_node("child-1", parent="local", capabilities=EVERY_KIND)
    process = create(api, name="alpha-job")
    container = create(api, SEED_CONTAINER, name="beta-web", node="child-1")
    workload_transition(workload_id=process["id"], to=WorkloadStatus.RUNNING)

    def names(query):
        response = api.get(f"/api/workloads?{query}")
        assert response.status_code == 200, response.content
        return sorted(w["name"] for w in response.json())

    assert names("status=running") == ["alpha-job"]
    assert names("status=running&status=scheduled") == ["alpha-job", "beta-web"]
    assert names("type=container") == ["beta-web"]
    assert container["node"] == "child-1"  # submitted at child-1, so that is its local node
    assert names("node=child-1") == ["beta-web"]
    assert names("node=local") == ["alpha-job"]
    assert names("name=ALPHA") == ["alpha-job"]
    assert api.get("/api/workloads?status=bogus").status_code == 400


def test_ordering_by_priority_and_name(api, local):
    for name, priority in (("b", 1), ("a", 5), ("c", 3)):
        create(api, name=name, priority=priority, requirements={"cpu": 0.1, "memory": 1024})
    assert [w["name"] for w in api.get("/api/workloads?ordering=-priority").json()] == ["a", "c", "b"]
    assert [w["name"] for w in api.get("/api/workloads?ordering=name").json()] == ["a", "b", "c"]


def test_list_query_count_does_not_grow_with_workloads(api, local, django_assert_max_num_queries):
    for i in range(15):
        create(api, name=f"w{i}", requirements={"cpu": 0.1, "memory": 1024})
    with django_assert_max_num_queries(6):
        assert len(api.get("/api/workloads").json()) == 15


def test_the_submit_answer_is_what_is_stored(api, local):
    # The answer is built from what the submission wrote, not read back: it must match a read.
    for body in ({}, {"requirements": {"cpu": 3.5, "memory": GiB}}):  # placed, then pending (room for 3.5 used)
        created = create(api, **body)
        assert created == api.get(f"/api/workloads/{created['id']}").json()
    assert created["status"] == "pending" and created["reason"].startswith("no node fits now")


def test_a_placed_submission_takes_a_bounded_number_of_queries(api, local, django_assert_max_num_queries):
    create(api)  # warms the placement's cached origin
    # auth, node, insert, the owner's quota, the placement's read and claim, move, events
    with django_assert_max_num_queries(10):
        create(api)


def test_a_user_sees_and_controls_only_their_own_workloads(api, user_api, client_for, local, django_user_model):
    mine = create(user_api, name="mine")
    theirs = create(api, name="theirs")
    bob = client_for(django_user_model.objects.create_user("bob", password="pw"))
    bobs = create(bob, name="bobs")
    assert [w["name"] for w in user_api.get("/api/workloads").json()] == ["mine"]
    assert sorted(w["name"] for w in api.get("/api/workloads").json()) == ["bobs", "mine", "theirs"]
    for other in (theirs, bobs):
        base = f"/api/workloads/{other['id']}"
        assert user_api.get(base).status_code == 404
        assert user_api.get(f"{base}/logs").status_code == 404
        assert user_api.post(f"{base}/stop").status_code == 404
        assert user_api.delete(base).status_code == 404
        assert Workload.objects.get(pk=other["id"]).status == "scheduled"
    assert user_api.post(f"/api/workloads/{mine['id']}/stop").json()["status"] == "stopped"
    assert user_api.delete(f"/api/workloads/{mine['id']}").status_code == 204
    # Staff controls anyone's.
    assert api.post(f"/api/workloads/{bobs['id']}/stop").json()["status"] == "stopped"
    assert api.delete(f"/api/workloads/{bobs['id']}").status_code == 204


def test_stats_count_only_the_users_own_workloads(api, user_api, local):
    create(user_api, name="mine")
    create(api, name="theirs")
    assert user_api.get("/api/resources/stats").json()["workloads"]["total"] == 1
    assert api.get("/api/resources/stats").json()["workloads"]["total"] == 2


def test_events_show_every_transition_and_the_placement_decision(api, local):
    created = create(api)
    api.post(f"/api/workloads/{created['id']}/stop")
    events = api.get(f"/api/workloads/{created['id']}/events").json()
    moves = [(e["from_status"], e["to_status"]) for e in events if e["kind"] == "transition"]
    assert moves == [("", "pending"), ("pending", "scheduled"), ("scheduled", "stopped")]
    placement = next(e for e in events if e["kind"] == "placement")
    assert placement["node_id"] == "local" and placement["details"][-1]["fits"] is True
