"""Joining with a join token, registering as one's own node only, and who may use the node API."""

import pytest

from nodes.models import Node, NodeStatus
from nodes.services import join_token_create
from tests.helpers import GiB, make_node

from .conftest import node_client

pytestmark = pytest.mark.django_db

CAPACITY = {"cpu": 2, "gpu": 0, "memory": 4 * GiB, "storage": 10 * GiB}
NODE_ENDPOINTS = [("post", "/api/node/register"), ("post", "/api/node/heartbeat"), ("get", "/api/node/work"),
                  ("post", "/api/node/reports"), ("post", "/api/node/logs")]


def register_body(node_id: str, **changes) -> dict:
    return {"node_id": node_id, "address": "10.0.0.7", "port": 8081, "capacity": CAPACITY, "parent": None,
            "peers": [], "labels": {"zone": "a"}, "capabilities": {"process": {"available": True}}} | changes


def test_an_agent_joins_with_a_join_token_then_registers_its_node(client):
    answer = client.post("/api/node/join", {"join_token": join_token_create(), "node_id": "edge-1"},
                         content_type="application/json")
    assert answer.status_code == 201, answer.content
    assert answer.json()["node_id"] == "edge-1" and answer.json()["credential"].startswith("cnetnode_")
    agent = node_client(answer.json()["credential"])

    registered = agent.post("/api/node/register", register_body("edge-1"), format="json")

    assert registered.status_code == 200, registered.content
    body = registered.json()
    assert body["node_id"] == "edge-1" and body["status"] == NodeStatus.READY and body["epoch"] >= 1
    assert body["heartbeat_seconds"] > 0 and body["server_time"]
    node = Node.objects.get(node_id="edge-1")
    assert (node.address, node.port, node.cpu_millicores, node.memory_bytes) == ("10.0.0.7", 8081, 2000, 4 * GiB)
    assert node.agent_epoch == body["epoch"] and node.labels == {"zone": "a"}


def test_a_join_token_is_spent_and_a_node_with_a_credential_cannot_join_again(client):
    token = join_token_create(uses=1)
    assert client.post("/api/node/join", {"join_token": token, "node_id": "a"},
                       content_type="application/json").status_code == 201
    again = client.post("/api/node/join", {"join_token": token, "node_id": "b"}, content_type="application/json")
    assert again.status_code == 403
    taken = client.post("/api/node/join", {"join_token": join_token_create(), "node_id": "a"},
                        content_type="application/json")
    assert taken.status_code == 409
    bad = client.post("/api/node/join", {"join_token": join_token_create(), "node_id": "no spaces"},
                      content_type="application/json")
    assert bad.status_code == 400 and "node_id" in bad.json()
    assert not Node.objects.filter(node_id="b").exists()


def test_a_node_credential_cannot_register_another_node(agent_for):
    agent = agent_for("a")
    other = make_node("b", cpu=1)

    answer = agent.post("/api/node/register", register_body("b"), format="json")

    assert answer.status_code == 403 and "node_id" in answer.json()
    fresh = Node.objects.get(node_id="b")
    assert (fresh.agent_epoch, fresh.cpu_millicores, fresh.address) == (other.agent_epoch, 1000, other.address)


def test_registering_with_a_parent_that_is_not_registered_yet_does_not_fail(agent_for):
    agent = agent_for("child")
    answer = agent.post("/api/node/register", register_body("child", parent="later", peers=["later-peer"]),
                        format="json")
    assert answer.status_code == 200, answer.content


def test_a_bad_register_body_is_refused_naming_the_field_and_changes_nothing(agent_for):
    agent = agent_for("a")
    epoch = agent.node.agent_epoch
    answer = agent.post("/api/node/register", register_body("a", capacity={"cpu": "two", "memory": GiB}),
                        format="json")
    assert answer.status_code == 400 and "capacity" in answer.json()
    assert Node.objects.get(node_id="a").agent_epoch == epoch


@pytest.mark.parametrize(("method", "path"), NODE_ENDPOINTS)
def test_a_user_token_gets_nowhere_on_the_node_api(user_api, api, method, path):
    for client in (user_api, api):  # a user's token, staff's too, is not a node credential
        assert getattr(client, method)(path, {}, format="json").status_code in (401, 403)


@pytest.mark.parametrize(("method", "path"), NODE_ENDPOINTS)
def test_no_credential_or_a_revoked_one_gets_401_on_the_node_api(client, method, path):
    assert getattr(client, method)(path).status_code == 401
    assert getattr(node_client("cnetnode_notakey"), method)(path, {}, format="json").status_code == 401


def test_a_node_credential_is_refused_on_the_user_api(agent_for):
    agent = agent_for("a")
    assert agent.get("/api/workloads").status_code == 401
    assert agent.post("/api/workloads", {}, format="json").status_code == 401


def test_the_schema_documents_the_node_api(api):
    answer = api.get("/api/schema", HTTP_ACCEPT="application/json")
    assert answer.status_code == 200, answer.content[:500]
    paths = answer.json()["paths"]
    for path in ("join", "register", "heartbeat", "work", "reports", "logs"):
        assert any(name.rstrip("/").endswith(f"/api/node/{path}") for name in paths), path


def test_a_child_registering_while_its_parent_has_joined_but_not_registered_lands_under_it(client):
    """The parent's row exists from its join, with no place in the tree yet: the child's link
    waits for the parent's registration, so the child's path is under the parent's."""
    token = join_token_create(uses=1)
    assert client.post("/api/node/join", {"join_token": token, "node_id": "slow-parent"},
                       content_type="application/json").status_code == 201
    make_node("quick-child", parent="slow-parent")
    make_node("slow-parent")
    parent, child = Node.objects.get(node_id="slow-parent"), Node.objects.get(node_id="quick-child")
    assert child.parent_id == parent.pk and child.path == f"{parent.path}{child.pk}/" and child.depth == 1


def test_joins_and_registrations_past_the_slots_are_deferred_with_retry_after_while_beats_go_on(
        client, agent_for, settings):
    """A fleet registering at once must not hold the web threads that answer the beats of the
    nodes already in: past CNET_NODE_REGISTRATIONS_IN_FLIGHT, a join or registration is answered
    503 at once, with Retry-After (its appointment: test_admission.py), and nothing is written."""
    agent = agent_for("in")
    epoch = Node.objects.get(node_id="in").agent_epoch
    token = join_token_create(uses=None)
    settings.CNET_NODE_REGISTRATIONS_IN_FLIGHT = 0  # every slot taken

    joined = client.post("/api/node/join", {"join_token": token, "node_id": "late"}, content_type="application/json")
    registered = agent.post("/api/node/register", register_body("in"), format="json")
    beat = agent.post("/api/node/heartbeat", {"epoch": epoch, "usage": {}, "running": []}, format="json")

    for deferred in (joined, registered):
        assert deferred.status_code == 503 and int(deferred["Retry-After"]) >= 1, deferred.content
        assert "try again" in deferred.json()["detail"]
    assert not Node.objects.filter(node_id="late").exists()
    assert Node.objects.get(node_id="in").agent_epoch == epoch
    assert beat.status_code == 200, beat.content

    settings.CNET_NODE_REGISTRATIONS_IN_FLIGHT = 2
    again = client.post("/api/node/join", {"join_token": token, "node_id": "late"}, content_type="application/json")
    assert again.status_code == 201, again.content
