"""Placement strategies: plain classes over node snapshots, testable without a database.

Each strategy ranks the nodes that fit. ``db_order`` is the same preference written
as SQL ordering, so ``place()`` can fetch only the best few of 10,000 nodes; the
Python ``rank`` is the authority and re-sorts what the database returned.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from django.db.models import Case, F, FloatField, Value, When
from django.db.models.functions import Cast

from core.errors import InvalidRequest
from nodes.models import RESOURCES
from nodes.resources import NAMES, Resources

# Where a node stands relative to the node a workload was submitted at.
TIER_LOCAL, TIER_DESCENDANT, TIER_PEER, TIER_PEER_DESCENDANT = range(4)
TIER_NAMES = {
    TIER_LOCAL: "local node",
    TIER_DESCENDANT: "descendant",
    TIER_PEER: "peer",
    TIER_PEER_DESCENDANT: "peer's descendant",
}


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    pk: int
    node_id: str
    capacity: Resources
    free: Resources
    tier: int = TIER_LOCAL
    depth: int = 0
    status: str = "ready"
    capabilities: dict = field(default_factory=dict)

    def fits(self, requirements: Resources) -> bool:
        return self.status == "ready" and requirements.fits_in(self.free)


class Strategy(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    # True when the order is the topology's (tier, depth, node_id): place() may then walk the
    # scope nearest first and stop at the first node with room (cheap at 10,000 nodes).
    nearest_first: ClassVar[bool] = False
    # For a ``db_order`` that no index serves: place() has it order only the first
    # ``sample_size`` fitting nodes in this indexed order (a bounded sample), not the whole scope.
    sample_order: ClassVar[tuple[str, ...]] = ()
    sample_size: ClassVar[int] = 0

    def rank(self, requirements: Resources, nodes: Sequence[NodeSnapshot]) -> list[NodeSnapshot]:
        """The nodes that fit, most preferred first."""
        fitting = [node for node in nodes if node.fits(requirements)]
        return sorted(fitting, key=lambda node: self.sort_key(requirements, node))

    @abstractmethod
    def sort_key(self, requirements: Resources, node: NodeSnapshot) -> tuple: ...

    @abstractmethod
    def db_order(self, requirements: Resources) -> list:
        """ORM ordering equal to ``sort_key``; the queryset is annotated with ``tier``."""


class DefaultStrategy(Strategy):
    """The seed's order: local, then descendants nearest first, then peers, then their subtrees."""

    name = "default"
    description = "local → descendants (nearest first) → peers → peers' descendants"
    nearest_first = True

    def sort_key(self, requirements, node):
        return (node.tier, node.depth, node.node_id)

    def db_order(self, requirements):
        return ["tier", "depth", "node_id"]


# How many of the fullest fitting nodes best_fit ranks (see BestFitStrategy).
BEST_FIT_SAMPLE = 64


class BestFitStrategy(Strategy):
    """The node left with the least spare capacity after placing the request (no waste).

    Waste is a node's free share of each resource, summed (``Node.free_fraction``, indexed),
    less the request's share of each; that part depends on the request, so no index orders
    nodes by waste. ``place()`` walks the free_fraction index to the ``BEST_FIT_SAMPLE``
    fullest fitting nodes in scope, the database orders those by waste (``db_order``) and
    returns the best few, and ``rank`` orders them again, exactly. That is exact whenever the
    scope holds no more fitting nodes than the sample. A larger scope is scored on that bounded
    sample of its fullest fitting nodes, as kube-scheduler (percentageOfNodesToScore) and Nomad
    score a bounded number of feasible nodes: ordering every fitting node by waste scanned all
    10,000 rows per placement, and a node outside the sample, freer than all of it, can win
    only where the request is a larger share of its capacity. The walk passes over the nodes
    too full for the request, so where most of the scope is, it reads them all, as that sort did.
    """

    name = "best_fit"
    description = "the fitting node whose free resources exceed the request least"
    sample_order = ("free_fraction", "depth", "node_id")
    sample_size = BEST_FIT_SAMPLE

    def sort_key(self, requirements, node):
        return (round(self.waste(requirements, node), 9), node.tier, node.depth, node.node_id)

    @staticmethod
    def waste(requirements: Resources, node: NodeSnapshot) -> float:
        """Spare capacity left after placing, as a fraction of capacity, summed over resources."""
        return sum(
            (getattr(node.free, name) - getattr(requirements, name)) / getattr(node.capacity, name)
            for name in NAMES
            if getattr(node.capacity, name)
        )

    def db_order(self, requirements):
        # waste(): the free shares, summed (free_fraction), less the request's shares.
        waste = F("free_fraction")
        for name, (capacity, _allocated) in RESOURCES.items():
            amount = getattr(requirements, name)
            if amount:
                waste -= Case(
                    When(**{f"{capacity}__gt": 0}, then=Value(float(amount)) / Cast(F(capacity), FloatField())),
                    default=Value(0.0),
                )
        return [waste.asc(), "tier", "depth", "node_id"]


STRATEGIES: dict[str, type[Strategy]] = {}


def register(strategy: type[Strategy]) -> type[Strategy]:
    """Make a strategy selectable by name (per submission, or CNET_DEFAULT_STRATEGY)."""
    STRATEGIES[strategy.name] = strategy
    return strategy


register(DefaultStrategy)
register(BestFitStrategy)


def strategy_get(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise InvalidRequest(f"unknown strategy {name!r}; known: {known}", field="strategy") from None
