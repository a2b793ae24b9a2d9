"""``place()`` on the real database: candidates, reasons per node, claims, exclusions."""

import pytest

from nodes.models import Node
from nodes.resources import MILLICORES_PER_CORE, Resources
from nodes.services import node_allocate, node_mark_offline, node_set_schedulable
from scheduler.placement import place
from scheduler.strategies import BestFitStrategy, DefaultStrategy
from tests.helpers import GiB, make_node

pytestmark = pytest.mark.django_db


def req(cpu=1.0, memory=1 * GiB):
    return Resources(cpu=round(cpu * MILLICORES_PER_CORE), memory=memory)


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


# --- reads: what one placement reads and sends --------------------------------------------------
def nodes_read_first(local_node_id, strategy, requirements):
    """The nodes the first read of a placement brings back (the origin aside)."""
    from scheduler.placement.reads import first_read

    _origin, nodes = first_read(local_node_id, requirements, strategy, None)
    return [node.node_id for node in nodes]


def test_the_first_read_brings_only_the_nodes_passed_over_and_the_first_that_fits():
    make_node("root")
    for i in range(10):
        make_node(f"c{i:02d}", parent="root")
    for node_id in ("root", "c00", "c01"):
        fill(node_id)
    assert nodes_read_first("root", DefaultStrategy(), req()) == ["root", "c00", "c01", "c02"]
    decision = place(requirements=req(), local_node_id="root", strategy=DefaultStrategy())
    assert decision.node.node_id == "c02"
    assert [(r["node"], r["fits"]) for r in decision.reasons] == [
        ("root", False), ("c00", False), ("c01", False), ("c02", True),
    ]


@pytest.mark.parametrize("strategy", [DefaultStrategy(), BestFitStrategy()], ids=["default", "best_fit"])
def test_once_its_origin_is_known_a_placement_is_one_read_and_one_claim(tree, strategy):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    place(requirements=req(), local_node_id="local", strategy=strategy)  # learns the origin
    fill("local")
    with CaptureQueriesContext(connection) as queries:
        decision = place(requirements=req(), local_node_id="local", strategy=strategy)
    assert decision.placed and decision.node.node_id != "local"
    assert len(queries) == 2, [q["sql"][:80] for q in queries]
    assert queries[1]["sql"].startswith("UPDATE")


def test_a_placement_never_believes_an_origin_that_changed_since_it_was_last_seen(tree):
    place(requirements=req(), local_node_id="local", strategy=DefaultStrategy())  # learns the origin
    for node_id in ("local", "child-1", "grandchild", "peer-1", "peer-child"):
        fill(node_id)
    make_node("peer-2", peers=("local",))  # a new peer: the known origin is stale
    decision = place(requirements=req(), local_node_id="local", strategy=DefaultStrategy())
    assert decision.node.node_id == "peer-2"
    from nodes.services import node_set_parent

    node_set_parent(node=Node.objects.get(node_id="local"), parent=Node.objects.get(node_id="stranger"))
    make_node("new-child", parent="local")  # under local's new path
    decision = place(requirements=req(), local_node_id="local", strategy=DefaultStrategy())
    assert [r["node"] for r in decision.reasons] == ["local", "child-1", "new-child"]


def test_best_fit_is_exact_when_the_scope_has_no_more_fitting_nodes_than_its_sample():
    import random

    from scheduler.strategies import BEST_FIT_SAMPLE

    rng = random.Random(7)
    make_node("root", cpu=64, memory=256 * GiB)
    for i in range(BEST_FIT_SAMPLE - 1):
        make_node(f"n{i:02d}", parent="root", cpu=rng.choice([2, 4, 8, 16]), memory=rng.choice([4, 8, 16]) * GiB)
    for node in Node.objects.all():
        taken = Resources(cpu=rng.randrange(0, node.cpu_millicores // 2, 100),
                          memory=rng.randrange(0, node.memory_bytes // 2, GiB // 4))
        assert node_allocate(node_pk=node.pk, requirements=taken)
    request = req(cpu=1.5, memory=3 * GiB)
    strategy = BestFitStrategy()
    everyone = [snapshot_of(node) for node in Node.objects.all()]
    best = strategy.rank(request, everyone)[0]
    assert place(requirements=request, local_node_id="root", strategy=strategy).node.node_id == best.node_id


def snapshot_of(node, tier=1):
    from scheduler.strategies import NodeSnapshot

    return NodeSnapshot(pk=node.pk, node_id=node.node_id, capacity=Resources(**node.capacity()),
                        free=Resources(**node.free()), tier=0 if node.depth == 0 else tier, depth=node.depth)


def test_best_fit_scores_a_bounded_sample_of_the_fullest_fitting_nodes():
    # "fullest": least free share; "snug": the least waste for 1 CPU / 1 GiB, but more free share.
    make_node("root", cpu=1, memory=1 * GiB)
    fill("root")
    for node_id, cpu, memory, taken in (("fullest", 64, 64 * GiB, 32), ("fuller", 64, 64 * GiB, 30),
                                        ("snug", 2, 2 * GiB, 0.5)):
        make_node(node_id, parent="root", cpu=cpu, memory=memory)
        node = Node.objects.get(node_id=node_id)
        assert node_allocate(node_pk=node.pk, requirements=req(cpu=taken, memory=round(taken * GiB)))

    class TwoNodeSample(BestFitStrategy):
        sample_size = 2

    assert place(requirements=req(), local_node_id="root", strategy=TwoNodeSample()).node.node_id == "fullest"
    assert place(requirements=req(), local_node_id="root", strategy=BestFitStrategy()).node.node_id == "snug"


def test_best_fit_takes_only_nodes_with_the_capability_asked_for(tree):
    make_node("snug-child", parent="local", cpu=1, memory=1 * GiB)  # best fit, but no containers
    make_node("docker-peer", peers=("local",), capabilities={"container": {"available": True}})
    for _ in range(2):  # the second one from the origin it learnt
        decision = place(requirements=req(), local_node_id="local", strategy=BestFitStrategy(),
                         capability="container")
        assert decision.node.node_id == "docker-peer"
        assert {r["node"]: r["reason"] for r in decision.reasons}["local"] == "cannot run container workloads"


@pytest.mark.parametrize("strategy", [DefaultStrategy(), BestFitStrategy()], ids=["default", "best_fit"])
def test_a_node_taken_between_the_read_and_the_claim_is_passed_for_the_next(tree, strategy):
    from django.db import connection
    from django.db.models import F

    make_node("snug-child", parent="local", cpu=1, memory=1 * GiB)  # best_fit's first choice
    first_choice = "local" if isinstance(strategy, DefaultStrategy) else "snug-child"
    raced = []

    def racer(execute, sql, params, many, context):
        # Just before the first claim, a racing placement takes the node being claimed.
        if sql.startswith("UPDATE") and not raced:
            raced.append(first_choice)
            Node.objects.filter(node_id=first_choice).update(memory_allocated_bytes=F("memory_bytes"))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(racer):
        decision = place(requirements=req(), local_node_id="local", strategy=strategy)
    assert raced and decision.placed and decision.node.node_id != first_choice
    reasons = {r["node"]: r["reason"] for r in decision.reasons}
    assert reasons[first_choice] == "lost a race for capacity; tried the next"
    assert allocated_memory(decision.node.node_id) == 1 * GiB
    assert Node.objects.get(node_id=first_choice).cpu_allocated_millicores == 0


def test_amounts_past_two_to_the_thirty_one_are_claimed_and_released_exactly():
    from nodes.services import node_release

    make_node("big", cpu=64, memory=1024 * GiB, storage=8 * 1024 * GiB)
    request = Resources(cpu=1500, memory=5 * GiB + 7, storage=3 * 1024 * GiB + 1)
    for strategy in (DefaultStrategy(), BestFitStrategy()):
        decision = place(requirements=request, local_node_id="big", strategy=strategy)
        assert decision.node.node_id == "big"
        node = Node.objects.get(node_id="big")
        assert (node.memory_allocated_bytes, node.storage_allocated_bytes) == (5 * GiB + 7, 3 * 1024 * GiB + 1)
        node_release(node_pk=node.pk, requirements=request)
        assert Node.objects.get(node_id="big").allocated() == {"cpu": 0, "gpu": 0, "memory": 0, "storage": 0}
    huge = Resources(memory=1025 * GiB)  # more than the node has: refused, not wrapped around
    assert not place(requirements=huge, local_node_id="big", strategy=DefaultStrategy()).placed
    assert not node_allocate(node_pk=node.pk, requirements=huge)
