"""``place()``: pick a node for a request and claim its resources, with a reason per node.

What it reads, and how, is in ``reads``: one statement in the common case, then the claim.
"""

import logging
from dataclasses import dataclass, field

from nodes.resources import NAMES, Resources, human
from nodes.services import node_allocate

from ..strategies import TIER_DESCENDANT, TIER_NAMES, TIER_PEER, TIER_PEER_DESCENDANT, NodeSnapshot, Strategy
from .batch import BatchDecision, instances_fitting, place_batch
from .reads import EXPLAIN_LIMIT, Origin, candidates, first_read, read, tier_until_fit, untried
from .reasons import shortfall as _shortfall
from .reasons import why_not as _why_not

__all__ = ["BatchDecision", "Decision", "instances_fitting", "place", "place_batch"]

logger = logging.getLogger(__name__)

# Rounds of candidates read after lost races before a placement gives up.
MAX_ROUNDS = 4


@dataclass
class Decision:
    node: NodeSnapshot | None
    reasons: list[dict] = field(default_factory=list)

    @property
    def placed(self) -> bool:
        return self.node is not None

    def summary(self) -> str:
        if self.node:
            return f"placed on {self.node.node_id} ({TIER_NAMES[self.node.tier]})"
        shown = "; ".join(f"{r['node']}: {r['reason']}" for r in self.reasons[:5])
        more = f"; and {len(self.reasons) - 5} more" if len(self.reasons) > 5 else ""
        return f"no node fits now: {shown}{more}" if shown else "no node is schedulable"


def place(
    *,
    requirements: Resources,
    local_node_id: str,
    strategy: Strategy,
    capability: str | None = None,
) -> Decision:
    """Choose a node by ``strategy`` and take ``requirements`` from it with one conditional UPDATE.

    Candidates are the local node, its subtree and its peers' subtrees. A lost race moves on
    to the next candidate. Every node passed over before the chosen one gets a reason; a
    request that fits nowhere returns an unplaced decision whose reasons say, per node, why not.
    """
    origin, first = first_read(local_node_id, requirements, strategy, capability)
    if strategy.nearest_first and origin.local:
        return _place_nearest_first(origin, first, requirements, strategy, capability)
    return _place_ranked(origin, first, requirements, strategy, capability)


def _place_nearest_first(origin: Origin, subtree: list[NodeSnapshot], requirements: Resources,
                         strategy: Strategy, capability: str | None) -> Decision:
    """Nearest-first strategies: walk the scope nearest first and claim the first node that holds.

    ``subtree`` (the first read) is the local node and its descendants up to the first that
    fits, and each peer tier is read the same way, so the nodes passed over get their reasons
    from the rows that found the winner. Only a tier whose winner was lost to a race, or whose
    nearest ``EXPLAIN_LIMIT`` nodes are all full, is searched further, by the fits filter.
    """
    reasons: list[dict] = []
    tried: set[int] = set()
    for tier in (TIER_DESCENDANT, TIER_PEER, TIER_PEER_DESCENDANT) if origin.peers else (TIER_DESCENDANT,):
        if tier == TIER_DESCENDANT:
            nearest = subtree
        else:
            nearest = read(tier_until_fit(origin, tier, requirements, capability), capability)
        chosen = _claim_first(nearest, requirements, capability, reasons, tried)
        # The read stopped at a node that fits (and was lost) or at the limit: there may be more.
        if chosen is None and nearest and (
            len(nearest) == EXPLAIN_LIMIT or not _shortfall(nearest[-1], requirements, capability)
        ):
            chosen = _claim_ranked(origin, requirements, strategy, capability, tried, [], tier)[0]
        if chosen:
            return _placed(chosen, strategy, reasons[:EXPLAIN_LIMIT])
    return Decision(None, reasons[:EXPLAIN_LIMIT])


def _place_ranked(origin: Origin, first: list[NodeSnapshot], requirements: Resources, strategy: Strategy,
                  capability: str | None) -> Decision:
    """Other strategies: their best few fitting nodes (``first``), ranked in Python, claimed in order."""
    reasons: list[dict] = []
    tried: set[int] = set()
    chosen, nodes_read = _claim_ranked(origin, requirements, strategy, capability, tried, reasons, nodes=first)
    if chosen is None:
        return Decision(None, reasons + _explain(origin, tried, requirements, capability))
    passed_over = _passed_over(origin, chosen, nodes_read, tried, requirements, strategy, capability)
    return _placed(chosen, strategy, [*passed_over, *reasons])


def _claim_ranked(origin: Origin, requirements: Resources, strategy: Strategy, capability: str | None,
                  tried: set[int], reasons: list[dict], tier: int | None = None,
                  nodes: list[NodeSnapshot] | None = None) -> tuple[NodeSnapshot | None, list[NodeSnapshot]]:
    """Rounds of: the strategy's best untried fitting nodes (``nodes`` in the first round, when
    already read), ranked, claimed in order. Returns the node claimed (or None) and every node read."""
    nodes_read: list[NodeSnapshot] = []
    for _round in range(MAX_ROUNDS):
        if nodes is None:
            nodes = read(candidates(origin, requirements, strategy, tried, capability, tier), capability)
        if not nodes:
            break
        nodes_read += nodes
        chosen = _claim_first(strategy.rank(requirements, nodes), requirements, capability, reasons, tried)
        if chosen:
            return chosen, nodes_read
        nodes = None
    return None, nodes_read


def _claim_first(nodes: list[NodeSnapshot], requirements: Resources, capability: str | None,
                 reasons: list[dict], tried: set[int]) -> NodeSnapshot | None:
    """Claim the first node (in the given order) that can hold the request; note why each other could not."""
    for node in nodes:
        tried.add(node.pk)
        why = _why_not(node, requirements, capability, "fits, but was taken by a racing placement")
        if not why["fits"]:
            reasons.append(why)
        elif node_allocate(node_pk=node.pk, requirements=requirements):
            return node
        else:
            reasons.append({"node": node.node_id, "fits": False, "reason": "lost a race for capacity; tried the next"})
    return None


def _placed(node: NodeSnapshot, strategy: Strategy, reasons: list[dict]) -> Decision:
    logger.info("placed on %s by %s", node.node_id, strategy.name)
    return Decision(node, [*reasons, {"node": node.node_id, "fits": True, "reason": _chosen(node, strategy)}])


# --- reasons --------------------------------------------------------------------------------
def _chosen(node: NodeSnapshot, strategy: Strategy) -> str:
    free = ", ".join(human(name, getattr(node.free, name)) for name in NAMES)
    return f"chosen by {strategy.name}: {TIER_NAMES[node.tier]}, fits ({free} free before)"


def _topology(node: NodeSnapshot) -> tuple:
    return (node.tier, node.depth, node.node_id)


def _passed_over(origin: Origin, chosen: NodeSnapshot, nodes_read: list[NodeSnapshot], tried: set[int],
                 requirements: Resources, strategy: Strategy, capability: str | None) -> list[dict]:
    """The nodes nearer than the chosen one (local first), each with why it did not get the work.

    Only from rows already read, the local node's from the origin and the candidates'; the
    nodes tried have their reasons from the claim."""
    nearer = {node.pk: node for node in (origin.local, *nodes_read)
              if node and node.pk not in tried and _topology(node) < _topology(chosen)}
    fits_reason = f"fits, but {strategy.name} preferred {chosen.node_id}"
    return [_why_not(node, requirements, capability, fits_reason)
            for node in sorted(nearer.values(), key=_topology)[:EXPLAIN_LIMIT]]


def _explain(origin: Origin, tried: set[int], requirements: Resources, capability: str | None) -> list[dict]:
    """Why each node in scope that was not tried cannot take the request now (nearest first)."""
    fits_reason = "fits, but was taken by a racing placement"
    return [_why_not(node, requirements, capability, fits_reason) for node in read(untried(origin, tried), capability)]
