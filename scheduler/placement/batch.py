"""``place_batch()``: room for many instances of one request (an array) in one pass.

One read of the fitting nodes in scope, in the strategy's order, then as many instances on each
node as it holds, claimed with one conditional UPDATE per node (``node_allocate`` of n times the
request). The reasons are the batch's: one line per node claimed or passed over, not one per
instance per node.
"""

import logging
from dataclasses import dataclass, field

from nodes.resources import NAMES, Resources
from nodes.services import node_allocate

from ..strategies import TIER_NAMES, NodeSnapshot, Strategy
from .reads import EXPLAIN_LIMIT, batch_candidates, node_reread, origin_read, read, untried
from .reasons import why_not

logger = logging.getLogger(__name__)

# Fitting nodes read per round; a batch that fills them all reads the next ones.
BATCH_READ = 500
# Rounds of reads before a batch leaves the rest pending (the pending loop places them later).
BATCH_ROUNDS = 20
# A node that lost a race for its room is read again and tried this many more times.
RACE_RETRIES = 2


@dataclass
class BatchDecision:
    # (node, how many instances it took), in the order they were claimed.
    claims: list[tuple[NodeSnapshot, int]] = field(default_factory=list)
    reasons: list[dict] = field(default_factory=list)
    wanted: int = 0

    @property
    def placed(self) -> int:
        return sum(n for _node, n in self.claims)

    def summary(self) -> str:
        placed = self.placed
        nodes = ", ".join(f"{n} on {node.node_id}" for node, n in self.claims[:5])
        more = f" and {len(self.claims) - 5} more nodes" if len(self.claims) > 5 else ""
        if placed == self.wanted:
            return f"placed {placed} instances: {nodes}{more}"
        short = [r for r in self.reasons if not r["fits"]]
        why = "; ".join(f"{r['node']}: {r['reason']}" for r in short[:5]) or "no node is schedulable"
        head = f"placed {placed} of {self.wanted} instances ({nodes}{more}); " if placed else ""
        return f"{head}{self.wanted - placed} wait, no node fits now: {why}"


def instances_fitting(free: Resources, requirements: Resources, limit: int) -> int:
    """How many instances of ``requirements`` fit in ``free``, at most ``limit``."""
    fitting = limit
    for name in NAMES:
        amount = getattr(requirements, name)
        if amount:
            fitting = min(fitting, getattr(free, name) // amount)
    return max(fitting, 0)


def _times(requirements: Resources, n: int) -> Resources:
    return Resources(**{name: getattr(requirements, name) * n for name in NAMES})


def place_batch(*, requirements: Resources, count: int, local_node_id: str, strategy: Strategy,
                capability: str | None = None) -> BatchDecision:
    """Claim room for up to ``count`` instances of ``requirements``, on the nodes ``strategy``
    prefers first, as many on each as it holds. Returns what it claimed where, and why the rest
    (if any) could not be placed now."""
    decision = BatchDecision(wanted=count)
    origin = origin_read(local_node_id, capability)
    tried: set[int] = set()
    remaining = count
    for _round in range(BATCH_ROUNDS):
        nodes = strategy.rank(requirements, read(batch_candidates(origin, requirements, strategy, tried, capability,
                                                                  limit=BATCH_READ), capability))
        if not nodes:
            break
        for node in nodes:
            tried.add(node.pk)
            taken = _claim_many(node, requirements, remaining, capability)
            if taken:
                decision.claims.append((node, taken))
                decision.reasons.append({"node": node.node_id, "fits": True, "instances": taken,
                                         "reason": f"took {taken} by {strategy.name} ({TIER_NAMES[node.tier]})"})
                remaining -= taken
            else:
                decision.reasons.append({"node": node.node_id, "fits": False,
                                         "reason": "lost a race for capacity; tried the next"})
            if not remaining:
                break
        if not remaining or len(nodes) < BATCH_READ:
            break
    if remaining:
        # Why the nodes not claimed cannot take one more instance now (nearest first, bounded).
        decision.reasons += [why_not(node, requirements, capability, "fits, but was taken by a racing placement")
                             for node in read(untried(origin, tried), capability)]
    decision.reasons = decision.reasons[:EXPLAIN_LIMIT]
    logger.info("batch of %d: placed %d on %d nodes by %s", count, count - remaining, len(decision.claims),
                strategy.name)
    return decision


def _claim_many(node: NodeSnapshot, requirements: Resources, wanted: int, capability: str | None) -> int:
    """Claim as many instances on ``node`` as it holds (at most ``wanted``) with one conditional
    UPDATE; after a lost race read the node again and claim what is left there."""
    free = node.free
    for _attempt in range(1 + RACE_RETRIES):
        taken = instances_fitting(free, requirements, wanted)
        if not taken:
            return 0
        if node_allocate(node_pk=node.pk, requirements=_times(requirements, taken)):
            return taken
        fresh = node_reread(node.pk, capability)
        if fresh is None or not fresh.fits(requirements):
            return 0
        free = fresh.free
    return 0
