"""Strategies are plain classes over node snapshots: no database here (pytest-django would refuse one)."""

import pytest

from core.errors import InvalidRequest
from nodes.resources import Resources
from scheduler.strategies import (
    STRATEGIES,
    TIER_DESCENDANT,
    TIER_LOCAL,
    TIER_PEER,
    TIER_PEER_DESCENDANT,
    BestFitStrategy,
    DefaultStrategy,
    NodeSnapshot,
    Strategy,
    register,
    strategy_get,
)

GiB = 1024**3


def snap(node_id, *, pk=None, cpu=4000, memory=8 * GiB, free_cpu=None, free_memory=None, tier=TIER_LOCAL,
         depth=0, status="ready"):
    return NodeSnapshot(
        pk=pk or abs(hash(node_id)) % 10_000,
        node_id=node_id,
        capacity=Resources(cpu=cpu, memory=memory),
        free=Resources(cpu=cpu if free_cpu is None else free_cpu,
                       memory=memory if free_memory is None else free_memory),
        tier=tier,
        depth=depth,
        status=status,
    )


SMALL = Resources(cpu=1000, memory=1 * GiB)


def test_default_strategy_orders_local_then_descendants_nearest_first_then_peers_then_their_descendants():
    nodes = [
        snap("peer-child", tier=TIER_PEER_DESCENDANT, depth=1),
        snap("grandchild", tier=TIER_DESCENDANT, depth=2),
        snap("peer", tier=TIER_PEER, depth=0),
        snap("child-b", tier=TIER_DESCENDANT, depth=1),
        snap("local", tier=TIER_LOCAL, depth=0),
        snap("child-a", tier=TIER_DESCENDANT, depth=1),
    ]
    ranked = DefaultStrategy().rank(SMALL, nodes)
    assert [n.node_id for n in ranked] == ["local", "child-a", "child-b", "grandchild", "peer", "peer-child"]


def test_default_strategy_skips_the_local_node_when_it_is_full():
    nodes = [
        snap("local", free_memory=GiB // 2),
        snap("child", tier=TIER_DESCENDANT, depth=1),
        snap("peer", tier=TIER_PEER),
    ]
    assert [n.node_id for n in DefaultStrategy().rank(SMALL, nodes)] == ["child", "peer"]


def test_default_strategy_prefers_a_peer_over_a_full_subtree():
    nodes = [
        snap("local", free_cpu=0),
        snap("child", tier=TIER_DESCENDANT, depth=1, free_cpu=500),
        snap("peer", tier=TIER_PEER),
    ]
    assert [n.node_id for n in DefaultStrategy().rank(SMALL, nodes)] == ["peer"]


@pytest.mark.parametrize("status", ["draining", "unhealthy", "offline"])
def test_strategies_never_rank_a_node_that_is_not_ready(status):
    nodes = [snap("local", status=status), snap("child", tier=TIER_DESCENDANT, depth=1)]
    for strategy in (DefaultStrategy(), BestFitStrategy()):
        assert [n.node_id for n in strategy.rank(SMALL, nodes)] == ["child"]


def test_nothing_is_ranked_when_nothing_fits():
    nodes = [snap("local", free_memory=0), snap("peer", tier=TIER_PEER, free_cpu=999)]
    assert DefaultStrategy().rank(SMALL, nodes) == []
    assert BestFitStrategy().rank(SMALL, nodes) == []


def test_best_fit_picks_the_node_left_with_least_waste_wherever_it_is():
    nodes = [
        snap("local", cpu=16000, memory=64 * GiB),
        snap("peer-snug", tier=TIER_PEER, cpu=2000, memory=2 * GiB),
        snap("child-roomy", tier=TIER_DESCENDANT, depth=1, cpu=8000, memory=16 * GiB),
    ]
    ranked = BestFitStrategy().rank(SMALL, nodes)
    assert [n.node_id for n in ranked] == ["peer-snug", "child-roomy", "local"]


def test_best_fit_counts_what_is_free_not_what_is_installed():
    nodes = [
        snap("big-but-busy", cpu=64000, memory=256 * GiB, free_cpu=1000, free_memory=1 * GiB),
        snap("small-idle", tier=TIER_DESCENDANT, depth=1, cpu=2000, memory=2 * GiB),
    ]
    assert BestFitStrategy().rank(SMALL, nodes)[0].node_id == "big-but-busy"


def test_best_fit_breaks_ties_by_topology_order():
    nodes = [
        snap("peer", tier=TIER_PEER),
        snap("local", tier=TIER_LOCAL),
        snap("child", tier=TIER_DESCENDANT, depth=1),
    ]
    assert [n.node_id for n in BestFitStrategy().rank(SMALL, nodes)] == ["local", "child", "peer"]


def test_strategy_registry_finds_builtins_by_name():
    assert isinstance(strategy_get("default"), DefaultStrategy)
    assert isinstance(strategy_get("best_fit"), BestFitStrategy)


def test_unknown_strategy_is_an_invalid_request_naming_the_field_and_the_known_ones():
    with pytest.raises(InvalidRequest) as caught:
        strategy_get("round_robin")
    assert caught.value.field == "strategy"
    assert caught.value.status == 400
    assert "round_robin" in str(caught.value)
    assert "best_fit" in str(caught.value) and "default" in str(caught.value)


def test_a_new_strategy_plugs_in_by_registering_a_class():
    class WorstFit(Strategy):
        name = "test_worst_fit"
        description = "most free memory first"

        def sort_key(self, requirements, node):
            return (-node.free.memory, node.node_id)

        def db_order(self, requirements):
            return ["node_id"]

    try:
        register(WorstFit)
        strategy = strategy_get("test_worst_fit")
        nodes = [snap("a", memory=2 * GiB), snap("b", memory=32 * GiB)]
        assert [n.node_id for n in strategy.rank(SMALL, nodes)] == ["b", "a"]
    finally:
        STRATEGIES.pop("test_worst_fit", None)
