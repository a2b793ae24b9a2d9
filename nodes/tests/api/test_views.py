"""The seed's /api/resources and /api/nodes."""

import pytest

from nodes.models import Node
from nodes.resources import Resources
from nodes.services import node_allocate
from tests.helpers import GiB, make_node

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/api/resources", "/api/resources/"])
def test_resources_shows_the_local_node_in_the_seeds_units(api, path):
    node = make_node("local", cpu=4, memory=8 * GiB, storage=100 * GiB)
    make_node("other", cpu=2)
    node_allocate(node_pk=node.pk, requirements=Resources(cpu=1500, memory=GiB))
    response = api.get(path)
    assert response.status_code == 200
    body = response.json()
    assert body["node_id"] == "local"
    assert body["capacity"] == {"cpu": 4.0, "gpu": 0, "memory": 8 * GiB, "storage": 100 * GiB}
    assert body["allocated"]["cpu"] == 1.5 and body["allocated"]["memory"] == GiB
    assert body["free"]["cpu"] == 2.5 and body["free"]["memory"] == 7 * GiB


def test_resources_of_another_node_by_query(api):
    make_node("local")
    make_node("child-1", parent="local", cpu=2)
    body = api.get("/api/resources?node=child-1").json()
    assert body["node_id"] == "child-1" and body["capacity"]["cpu"] == 2.0 and body["parent"] == "local"


def test_resources_of_an_unknown_node_is_404_naming_it(api):
    make_node("local")
    response = api.get("/api/resources?node=ghost-7")
    assert response.status_code == 404
    assert "ghost-7" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/api/nodes", "/api/nodes/"])
def test_nodes_lists_every_node_with_parent_children_and_peers(api, path):
    make_node("parent")
    make_node("child-1", parent="parent")
    make_node("child-2", parent="parent")
    make_node("peer-1", peers=("parent",))
    response = api.get(path)
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    nodes = {n["node_id"]: n for n in body}
    assert set(nodes) == {"parent", "child-1", "child-2", "peer-1"}
    assert nodes["parent"]["children"] == ["child-1", "child-2"]
    assert nodes["parent"]["peers"] == ["peer-1"]
    assert nodes["peer-1"]["peers"] == ["parent"]
    assert nodes["child-1"]["parent"] == "parent"
    assert nodes["parent"]["parent"] is None


def test_one_node_by_node_id(api):
    make_node("parent")
    make_node("child-1", parent="parent")
    assert api.get("/api/nodes/child-1").json()["parent"] == "parent"
    assert api.get("/api/nodes/ghost").status_code == 404


def test_nodes_filter_by_status_and_parent(api):
    make_node("parent")
    make_node("child-1", parent="parent")
    make_node("child-2", parent="parent")
    Node.objects.filter(node_id="child-2").update(status="draining")
    assert [n["node_id"] for n in api.get("/api/nodes?parent=parent").json()] == ["child-1", "child-2"]
    assert [n["node_id"] for n in api.get("/api/nodes?status=draining").json()] == ["child-2"]


def test_node_list_query_count_does_not_grow_with_nodes(api, django_assert_max_num_queries):
    make_node("parent")
    for i in range(20):
        make_node(f"child-{i}", parent="parent", peers=("parent",))
    with django_assert_max_num_queries(8):
        assert len(api.get("/api/nodes").json()) == 21
