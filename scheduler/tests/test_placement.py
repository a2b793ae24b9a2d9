"""``place()`` on the real database: candidates, reasons per node, claims, exclusions."""

import pytest

from nodes.models import Node
from nodes.resources import Resources
from nodes.services import node_allocate, node_mark_offline, node_set_schedulable
from scheduler.placement import place
from scheduler.strategies import BestFitStrategy, DefaultStrategy
from tests.helpers import GiB, make_node

pytestmark = pytest.mark.django_db


def req(cpu=1.0, memory=1 * GiB):
    return Resources(cpu=round(cpu * 1000), memory=memory)


@pytest.fixture
def tree():
    """local → child-1 → grandchild; local ↔ peer-1 → peer-child. All 4 CPU / 8 GiB."""
    make_node("local")
    make_node("child-1", parent="local")
    make_node("grandchild", parent="child-1")
    make_node("peer-1", peers=("local",))
    make_node("peer-child", parent="peer-1")
    make_node("stranger")  # not related to local: never a candidate


def fill(node_id, *, leave_memory=0):
    node = Node.objects.get(node_id=node_id)
    free = node.memory_bytes - node.memory_allocated_bytes
    assert node_allocate(node_pk=node.pk, requirements=Resources(memory=free - leave_memory))


def allocated_memory(node_id):
    return Node.objects.get(node_id=node_id).memory_allocated_bytes


def test_place_prefers_the_local_node_and_claims_its_resources(tree):
    decision = place(requirements=req(memory=2 * GiB), local_node_id="local", strategy=DefaultStrategy())
    assert decision.placed and decision.node.node_id == "local"
    assert allocated_memory("local") == 2 * GiB
    node = Node.objects.get(node_id="local")
    assert node.cpu_allocated_millicores == 1000
    assert decision.reasons[-1]["node"] == "local" and decision.reasons[-1]["fits"]


def test_place_falls_back_to_the_nearest_descendant_and_explains_why_not_local(tree):
    fill("local", leave_memory=1 * GiB)
    decision = place(requirements=req(memory=2 * GiB), local_node_id="local", strategy=DefaultStrategy())
    assert decision.node.node_id == "child-1"
    by_node = {r["node"]: r for r in decision.reasons}
    assert by_node["local"]["fits"] is False
    assert by_node["local"]["reason"] == "needs 2.0 GiB memory, 1.0 GiB free"
    assert by_node["child-1"]["fits"] is True


def test_place_goes_to_peers_after_the_whole_subtree_then_to_peers_descendants(tree):
    for node_id in ("local", "child-1", "grandchild"):
        fill(node_id)
    assert place(requirements=req(), local_node_id="local", strategy=DefaultStrategy()).node.node_id == "peer-1"
    fill("peer-1")
    decision = place(requirements=req(), local_node_id="local", strategy=DefaultStrategy())
    assert decision.node.node_id == "peer-child"


def test_every_node_passed_over_before_the_chosen_one_has_a_reason(tree):
    for node_id in ("local", "child-1", "grandchild"):
        fill(node_id, leave_memory=1 * GiB)
    decision = place(requirements=req(memory=2 * GiB), local_node_id="local", strategy=DefaultStrategy())
    assert decision.node.node_id == "peer-1"
    assert [(r["node"], r["fits"]) for r in decision.reasons] == [
        ("local", False), ("child-1", False), ("grandchild", False), ("peer-1", True),
    ]
    assert all(r["reason"] == "needs 2.0 GiB memory, 1.0 GiB free" for r in decision.reasons[:3])


def test_a_fitting_node_beyond_the_explained_nearest_ones_is_still_found():
    from scheduler.placement import EXPLAIN_LIMIT

    make_node("root")
    children = [f"c{i:03d}" for i in range(EXPLAIN_LIMIT + 5)]
    for node_id in children:
        make_node(node_id, parent="root")
    for node_id in ["root", *children[: EXPLAIN_LIMIT + 2]]:
        fill(node_id)
    decision = place(requirements=req(), local_node_id="root", strategy=DefaultStrategy())
    assert decision.node.node_id == children[EXPLAIN_LIMIT + 2]
    assert len(decision.reasons) == EXPLAIN_LIMIT + 1  # the nearest EXPLAIN_LIMIT passed over, then the chosen
    assert decision.reasons[0]["node"] == "root" and not decision.reasons[0]["fits"]


def test_best_fit_says_why_a_nearer_node_that_fits_was_not_chosen(tree):
    fill("child-1", leave_memory=2 * GiB)  # the snuggest fit for 2 GiB
    decision = place(requirements=req(memory=2 * GiB), local_node_id="local", strategy=BestFitStrategy())
    assert decision.node.node_id == "child-1"
    assert decision.reasons[0] == {"node": "local", "fits": True, "reason": "fits, but best_fit preferred child-1"}


def test_a_request_that_fits_nowhere_now_claims_nothing_and_gives_a_reason_for_every_candidate(tree):
    for node_id in ("local", "child-1", "grandchild", "peer-1", "peer-child"):
        fill(node_id, leave_memory=1 * GiB)
    before = {n.node_id: n.memory_allocated_bytes for n in Node.objects.all()}
    decision = place(requirements=req(memory=2 * GiB), local_node_id="local", strategy=DefaultStrategy())
    assert not decision.placed
    reasons = {r["node"]: r["reason"] for r in decision.reasons}
    assert set(reasons) == {"local", "child-1", "grandchild", "peer-1", "peer-child"}
    assert all(reason == "needs 2.0 GiB memory, 1.0 GiB free" for reason in reasons.values())
    assert "local: needs 2.0 GiB memory, 1.0 GiB free" in decision.summary()
    assert {n.node_id: n.memory_allocated_bytes for n in Node.objects.all()} == before


@pytest.mark.parametrize("make_unschedulable", [
    lambda node_id: node_set_schedulable(node_id=node_id, schedulable=False),
    lambda node_id: Node.objects.filter(node_id=node_id).update(status="unhealthy"),
    lambda node_id: node_mark_offline(node_id=node_id),
], ids=["draining", "unhealthy", "offline"])
def test_nodes_that_are_not_ready_are_not_candidates(tree, make_unschedulable):
    make_unschedulable("local")
    decision = place(requirements=req(), local_node_id="local", strategy=DefaultStrategy())
    assert decision.node.node_id == "child-1"
    assert allocated_memory("local") == 0
    for node_id in ("child-1", "grandchild", "peer-1", "peer-child"):
        make_unschedulable(node_id)
    decision = place(requirements=req(), local_node_id="local", strategy=DefaultStrategy())
    assert not decision.placed
    status = Node.objects.get(node_id="local").status
    assert {r["node"]: r["reason"] for r in decision.reasons}["local"] == f"node is {status}"


def test_best_fit_takes_the_snuggest_candidate_in_scope(tree):
    make_node("snug-child", parent="local", cpu=1, memory=1 * GiB)
    decision = place(requirements=req(), local_node_id="local", strategy=BestFitStrategy())
    assert decision.node.node_id == "snug-child"
    assert Node.objects.get(node_id="snug-child").cpu_allocated_millicores == 1000


def test_nodes_outside_the_local_nodes_subtree_and_peers_are_never_chosen(tree):
    for node_id in ("local", "child-1", "grandchild", "peer-1", "peer-child"):
        fill(node_id)
    decision = place(requirements=req(), local_node_id="local", strategy=DefaultStrategy())
    assert not decision.placed
    assert "stranger" not in {r["node"] for r in decision.reasons}
    assert allocated_memory("stranger") == 0


def test_a_node_without_the_capability_is_skipped_with_a_reason(tree):
    make_node("docker-child", parent="local", capabilities={"container": {"available": True}})
    decision = place(requirements=req(), local_node_id="local", strategy=DefaultStrategy(), capability="container")
    assert decision.node.node_id == "docker-child"
    reasons = {r["node"]: r["reason"] for r in decision.reasons}
    assert reasons["local"] == "cannot run container workloads"
