"""``place()``: pick a node for a request and claim its resources, with a reason per node."""

import logging
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import Case, F, IntegerField, Q, Value, When

from nodes.models import RESOURCES, Node, NodeStatus
from nodes.resources import NAMES, Resources, human
from nodes.services import node_allocate

from .strategies import (
    TIER_DESCENDANT,
    TIER_LOCAL,
    TIER_NAMES,
    TIER_PEER,
    TIER_PEER_DESCENDANT,
    NodeSnapshot,
    Strategy,
)

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
    to the next candidate. Every node passed over before the chosen one gets a reason; a
    request that fits nowhere returns an unplaced decision whose reasons say, per node, why not.
    """
    origin = _origin(local_node_id)
    if strategy.tier_major and origin.local:
        return _place_nearest_first(origin, requirements, strategy, capability)
    return _place_ranked(origin, requirements, strategy, capability)


def _place_nearest_first(origin: "_Origin", requirements: Resources, strategy: Strategy,
                         capability: str | None) -> Decision:
    """Tier-major strategies: walk the scope nearest first and claim the first node that holds.

    One query per tier reads its nearest ``EXPLAIN_LIMIT`` nodes whether they fit or not, so
    the nodes passed over get their reasons from the same rows; the local node comes from
    ``_origin``. Only a tier with more nodes than that is searched further, by the fits filter.
    """
    reasons: list[dict] = []
    tried: set[int] = set()
    for tier in _TIERS if origin.peers else _TIERS[:2]:
        nearest = [origin.local] if tier == TIER_LOCAL else _tier_nearest(origin, tier)
        nearest.sort(key=lambda node: strategy.sort_key(requirements, node))
        chosen = _claim_first(nearest, requirements, capability, reasons, tried)
        if chosen is None and len(nearest) == EXPLAIN_LIMIT:
            for _round in range(MAX_ROUNDS):
                rows = _candidates(origin, requirements, strategy, tried, capability, tier)
                further = [_snapshot(row) for row in rows]
                if not further:
                    break
                chosen = _claim_first(further, requirements, capability, [], tried)
                if chosen:
                    break
        if chosen:
            return _placed(chosen, strategy, reasons[:EXPLAIN_LIMIT])
    return Decision(None, reasons[:EXPLAIN_LIMIT])


def _place_ranked(origin: "_Origin", requirements: Resources, strategy: Strategy,
                  capability: str | None) -> Decision:
    """Other strategies: fetch their best few fitting nodes, rank them in Python, claim in order."""
    reasons: list[dict] = []
    tried: set[int] = set()
    for _round in range(MAX_ROUNDS):
        rows = _candidates(origin, requirements, strategy, tried, capability)
        if not rows:
            break
        ranked = strategy.rank(requirements, [_snapshot(row) for row in rows])
        chosen = _claim_first(ranked, requirements, capability, reasons, tried)
        if chosen:
            if origin.local and chosen.tier != TIER_LOCAL:
                reasons[:0] = _passed_over(origin, chosen, requirements, strategy, capability)
            return _placed(chosen, strategy, reasons)
    return Decision(None, reasons + _explain(origin, tried, requirements, capability))


def _claim_first(nodes: list[NodeSnapshot], requirements: Resources, capability: str | None,
                 reasons: list[dict], tried: set[int]) -> NodeSnapshot | None:
    """Claim the first node (in the given order) that can hold the request; note why each other could not."""
    fits_reason = "fits, but was taken by a racing placement"
    for node in nodes:
        tried.add(node.pk)
        why = _why_not(node, requirements, capability, fits_reason)
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


@dataclass(frozen=True)
class _Origin:
    """The node a request was submitted at (as it was read) and its peers' (pk, path)."""

    local: NodeSnapshot | None
    path: str = ""
    peers: tuple[tuple[int, str], ...] = ()

    @property
    def key(self) -> tuple:
        return (self.local.pk, self.path, self.peers) if self.local else ()


def _origin(local_node_id: str) -> _Origin:
    """The local node's row and its peers' paths, in one round trip."""
    table, links = connection.ops.quote_name(Node._meta.db_table), Node.peers.through._meta.db_table
    columns = ", ".join(f"n.{connection.ops.quote_name(column)}" for column in _COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1, {columns} FROM {table} n WHERE n.node_id = %s "
            f"UNION ALL SELECT 0, {columns} FROM {table} n "
            f"JOIN {connection.ops.quote_name(links)} p ON p.from_node_id = n.id "
            f"JOIN {table} l ON l.id = p.to_node_id WHERE l.node_id = %s",
            [local_node_id, local_node_id],
        )
        rows = [(is_local, _decoded(dict(zip(_COLUMNS, values, strict=True))))
                for is_local, *values in cursor.fetchall()]
    local = next((row for is_local, row in rows if is_local), None)
    if local is None:
        return _Origin(None)
    peers = tuple(sorted((row["id"], row["path"]) for is_local, row in rows if not is_local))
    return _Origin(_snapshot({**local, "pk": local["id"], "tier": TIER_LOCAL}), local["path"], peers)


# Node columns read raw by ``_origin`` (a snapshot plus the path).
_COLUMNS = ("id", "path", *(name for name in SNAPSHOT_FIELDS if name not in ("pk", "tier")))
# Compiled candidate queries by everything they are built from. Building and compiling the
# ORM query costs several times what Postgres needs to run it, and a cluster sees the same
# few (strategy, request, submitting node) shapes again and again.
_CANDIDATE_SQL: dict[tuple, tuple[str, tuple]] = {}
_CANDIDATE_SQL_MAX = 256


def _candidates(origin: _Origin, requirements: Resources, strategy: Strategy, tried: set[int],
                capability: str | None = None, tier: int | None = None) -> list[dict]:
    """The best ``PREFETCH`` fitting, ready (and capable) nodes in scope (or in one tier of it),
    not yet tried, in the strategy's order: one query."""
    return _run_cached(
        ("candidates", type(strategy), requirements, origin.key, frozenset(tried), capability, tier),
        lambda: _scope(origin, tier)
        .filter(_fits(requirements), status=NodeStatus.READY, **_capable_filter(capability))
        .exclude(pk__in=tried)
        .order_by(*strategy.db_order(requirements))
        .values(*SNAPSHOT_FIELDS)[:PREFETCH],
    )


def _tier_nearest(origin: _Origin, tier: int) -> list[NodeSnapshot]:
    """The nearest ``EXPLAIN_LIMIT`` nodes of one tier, fitting or not: it walks the (depth,
    node_id) index of one subtree instead of sorting the whole scope on a computed tier."""
    rows = _run_cached(("nearest", origin.key, tier), lambda: _nearest_first(_scope(origin, tier)))
    return [_snapshot(row) for row in rows]


_TIERS = (TIER_LOCAL, TIER_DESCENDANT, TIER_PEER, TIER_PEER_DESCENDANT)


def _capable_filter(capability: str | None) -> dict:
    # In the query, not after it: a post-filter of the first few fetched would miss a capable
    # node behind MAX_ROUNDS * PREFETCH incapable ones.
    return {f"capabilities__{capability}__available": True} if capability else {}


def _run_cached(key: tuple, build) -> list[dict]:
    """Run the query ``build()`` makes, compiling it only the first time ``key`` is seen."""
    compiled = _CANDIDATE_SQL.get(key)
    if compiled is None:
        compiled = build().query.sql_with_params()
        if len(_CANDIDATE_SQL) >= _CANDIDATE_SQL_MAX:
            _CANDIDATE_SQL.clear()
        _CANDIDATE_SQL[key] = compiled
    sql, params = compiled
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return [_decoded(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def _decoded(row: dict) -> dict:
    """A raw row as the ORM would give it: JSON columns come back from the cursor as text."""
    row["capabilities"] = Node._meta.get_field("capabilities").from_db_value(row["capabilities"], None, connection)
    return row


def _scope(origin: _Origin, tier: int | None = None):
    """Local node, its descendants, its peers and their descendants, tagged with a tier;
    only one tier's nodes when ``tier`` is given.

    With no local node registered, every node is a candidate, shallowest first."""
    if origin.local is None:
        return Node.objects.annotate(tier=Value(TIER_DESCENDANT))
    local, subtree = Q(pk=origin.local.pk), Q(path__startswith=origin.path)
    by_tier = {TIER_LOCAL: local, TIER_DESCENDANT: subtree & ~local}
    in_scope = subtree
    if origin.peers:
        peers = Q(pk__in=[pk for pk, _path in origin.peers])
        peer_subtrees = Q()
        for _pk, path in origin.peers:
            peer_subtrees |= Q(path__startswith=path)
        by_tier |= {TIER_PEER: peers & ~subtree, TIER_PEER_DESCENDANT: peer_subtrees & ~peers & ~subtree}
        in_scope |= peer_subtrees
    if tier is not None:
        return Node.objects.filter(by_tier[tier]).annotate(tier=Value(tier, output_field=IntegerField()))
    tagged = Case(*(When(condition, then=Value(t)) for t, condition in by_tier.items()),
                  output_field=IntegerField())
    return Node.objects.filter(in_scope).annotate(tier=tagged)


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


def _chosen(node: NodeSnapshot, strategy: Strategy) -> str:
    free = ", ".join(human(name, getattr(node.free, name)) for name in NAMES)
    return f"chosen by {strategy.name}: {TIER_NAMES[node.tier]}, fits ({free} free before)"


def _passed_over(origin: _Origin, chosen: NodeSnapshot, requirements: Resources, strategy: Strategy,
                 capability: str | None) -> list[dict]:
    """The nodes nearer than the chosen one (local first), each with why it did not get the work."""
    nearer = (
        Q(tier__lt=chosen.tier)
        | Q(tier=chosen.tier, depth__lt=chosen.depth)
        | Q(tier=chosen.tier, depth=chosen.depth, node_id__lt=chosen.node_id)
    )
    rows = _run_cached(("passed over", origin.key, chosen.pk),
                       lambda: _nearest_first(_scope(origin).filter(nearer)))
    fits_reason = f"fits, but {strategy.name} preferred {chosen.node_id}"
    return [_why_not(_snapshot(row), requirements, capability, fits_reason) for row in rows]


def _explain(origin: _Origin, tried: set[int], requirements: Resources, capability: str | None) -> list[dict]:
    """Why each node in scope that was not tried cannot take the request now (nearest first)."""
    rows = _run_cached(("unplaced", origin.key, frozenset(tried)),
                       lambda: _nearest_first(_scope(origin).exclude(pk__in=tried)))
    fits_reason = "fits, but was taken by a racing placement"
    return [_why_not(_snapshot(row), requirements, capability, fits_reason) for row in rows]


def _nearest_first(queryset):
    return queryset.order_by("tier", "depth", "node_id").values(*SNAPSHOT_FIELDS)[:EXPLAIN_LIMIT]


def _why_not(node: NodeSnapshot, requirements: Resources, capability: str | None, fits_reason: str) -> dict:
    if node.status != NodeStatus.READY:
        why = f"node is {node.status}"
    elif capability and not node.capabilities.get(capability, {}).get("available"):
        why = f"cannot run {capability} workloads"
    else:
        why = "; ".join(requirements.shortfalls(node.free))
    return {"node": node.node_id, "fits": not why, "reason": why or fits_reason}
