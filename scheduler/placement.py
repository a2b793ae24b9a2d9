"""``place()``: pick a node for a request and claim its resources, with a reason per node."""

import logging
from dataclasses import dataclass, field

from django.db.models import Case, F, IntegerField, Q, Value, When

from nodes.models import RESOURCES, Node, NodeStatus
from nodes.resources import NAMES, Resources, human
from nodes.services import node_allocate

from .strategies import TIER_DESCENDANT, TIER_LOCAL, TIER_NAMES, NodeSnapshot, Strategy

logger = logging.getLogger(__name__)

# How many of the best candidates one query fetches; more are read only after lost races.
PREFETCH = 8
MAX_ROUNDS = 4
# A pending workload explains itself node by node, up to this many nodes.
EXPLAIN_LIMIT = 50

SNAPSHOT_FIELDS = (
    "pk",
    "node_id",
    "status",
    "depth",
    "tier",
    "capabilities",
    *(column for pair in RESOURCES.values() for column in pair),
)


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
    to the next candidate. A request that fits nowhere returns an unplaced decision whose
    reasons say, per node, why not.
    """
    local = Node.objects.filter(node_id=local_node_id).values("pk", "path", "status").first()
    # With no local node registered, every node is a candidate, shallowest first.
    scope = _scope(local) if local else Node.objects.annotate(tier=Value(TIER_DESCENDANT))
    reasons: list[dict] = []
    tried: set[int] = set()
    for _round in range(MAX_ROUNDS):
        rows = (
            scope.filter(_fits(requirements), status=NodeStatus.READY)
            .exclude(pk__in=tried)
            .order_by(*strategy.db_order(requirements))
            .values(*SNAPSHOT_FIELDS)[:PREFETCH]
        )
        candidates = [_snapshot(row) for row in rows]
        if capability:
            candidates = _capable(candidates, capability, reasons)
        ranked = strategy.rank(requirements, candidates)
        if not ranked and not rows:
            break
        for node in ranked:
            tried.add(node.pk)
            if node_allocate(node_pk=node.pk, requirements=requirements):
                reasons.append({"node": node.node_id, "fits": True, "reason": _chosen(node, strategy)})
                if local and node.tier != TIER_LOCAL:
                    reasons[:0] = _explain(scope.filter(pk=local["pk"]), requirements)
                logger.info("placed on %s by %s", node.node_id, strategy.name)
                return Decision(node, reasons)
            reasons.append({"node": node.node_id, "fits": False, "reason": "lost a race for capacity; tried the next"})
        tried.update(row["pk"] for row in rows)
    return Decision(None, reasons + _explain(scope.exclude(pk__in=tried), requirements, capability))


def _scope(local: dict):
    """Local node, its descendants, its peers and their descendants, tagged with a tier."""
    peers = list(Node.objects.filter(peers=local["pk"]).values("pk", "path"))
    in_scope = Q(path__startswith=local["path"])
    for peer in peers:
        in_scope |= Q(path__startswith=peer["path"])
    tier = Case(
        When(pk=local["pk"], then=Value(0)),
        When(path__startswith=local["path"], then=Value(1)),
        When(pk__in=[peer["pk"] for peer in peers], then=Value(2)),
        default=Value(3),
        output_field=IntegerField(),
    )
    return Node.objects.filter(in_scope).annotate(tier=tier)


def _fits(requirements: Resources) -> Q:
    condition = Q()
    for name, (capacity, allocated) in RESOURCES.items():
        amount = getattr(requirements, name)
        if amount:
            condition &= Q(**{f"{allocated}__lte": F(capacity) - amount})
    return condition


def _snapshot(row: dict) -> NodeSnapshot:
    capacity = Resources(**{name: row[column] for name, (column, _a) in RESOURCES.items()})
    allocated = Resources(**{name: row[column] for name, (_c, column) in RESOURCES.items()})
    return NodeSnapshot(
        pk=row["pk"],
        node_id=row["node_id"],
        capacity=capacity,
        free=Resources(**{n: getattr(capacity, n) - getattr(allocated, n) for n in RESOURCES}),
        tier=row["tier"],
        depth=row["depth"],
        status=row["status"],
        capabilities=row["capabilities"] or {},
    )


def _capable(candidates: list[NodeSnapshot], capability: str, reasons: list[dict]) -> list[NodeSnapshot]:
    capable = []
    for node in candidates:
        if node.capabilities.get(capability, {}).get("available"):
            capable.append(node)
        else:
            reasons.append({"node": node.node_id, "fits": False, "reason": f"cannot run {capability} workloads"})
    return capable


def _chosen(node: NodeSnapshot, strategy: Strategy) -> str:
    free = ", ".join(human(name, getattr(node.free, name)) for name in NAMES)
    return f"chosen by {strategy.name}: {TIER_NAMES[node.tier]}, fits ({free} free before)"


def _explain(queryset, requirements: Resources, capability: str | None = None) -> list[dict]:
    """Why each node in ``queryset`` cannot take the request now (nearest nodes first)."""
    reasons = []
    for row in queryset.order_by("tier", "depth", "node_id").values(*SNAPSHOT_FIELDS)[:EXPLAIN_LIMIT]:
        node = _snapshot(row)
        if node.status != NodeStatus.READY:
            why = f"node is {node.status}"
        elif capability and not node.capabilities.get(capability, {}).get("available"):
            why = f"cannot run {capability} workloads"
        else:
            why = "; ".join(requirements.shortfalls(node.free)) or "fits, but was taken by a racing placement"
        reasons.append({"node": node.node_id, "fits": False, "reason": why})
    return reasons
