"""The reads ``place()`` makes: where the request was submitted (its origin), then the nodes its
strategy needs, each one statement that is compiled once and prepared (``prepared_cursor``)."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter, sub
from typing import NamedTuple

from django.db import connection
from django.db.models import Case, F, IntegerField, OrderBy, Q, Value, When

from nodes.db import literal_statement, prepared_cursor
from nodes.models import RESOURCES, Node, NodeStatus
from nodes.resources import NAMES, Resources

from ..strategies import TIER_DESCENDANT, TIER_LOCAL, TIER_PEER, TIER_PEER_DESCENDANT, NodeSnapshot, Strategy

# How many of the best candidates one query fetches; more are read only after lost races.
PREFETCH = 8
# A pending workload explains itself node by node, up to this many nodes.
EXPLAIN_LIMIT = 50

SNAPSHOT_FIELDS = (
    "pk",
    "node_id",
    "path",
    "status",
    "depth",
    "tier",
    "capabilities",
    *(column for pair in RESOURCES.values() for column in pair),
)


@dataclass(frozen=True)
class Origin:
    """The node a request was submitted at (as it was read) and its peers' (pk, path)."""

    local: NodeSnapshot | None
    path: str = ""
    peers: tuple[tuple[int, str], ...] = ()

    @property
    def key(self) -> tuple:
        """What the node queries are built from."""
        return (self.local.pk, self.path, self.peers) if self.local else ()


class Query(NamedTuple):
    """A node query: ``key`` names everything ``build()`` makes its (sql, params) from."""

    key: tuple
    build: Callable[[], tuple[str, tuple]]


# --- the origin and the first read ----------------------------------------------------------
def first_read(local_node_id: str, requirements: Resources, strategy: Strategy,
               capability: str | None) -> tuple[Origin, list[NodeSnapshot]]:
    """The origin and the strategy's first read of nodes (``_first_query``).

    Once a placement has seen this origin, both come in one statement: the first read is built
    from the origin as it was (``_ORIGINS``), the same statement reads the origin's rows anew,
    and the nodes count only if it has not changed since (else they are read again for the new
    one). So a move or a new peer link costs one read, and nothing stale is ever believed.
    """
    known = _ORIGINS.get(local_node_id)
    if known is not None:
        origin, nodes = _read_with_origin(local_node_id, _first_query(known, requirements, strategy, capability),
                                          capability)
        if origin.key == known.key:
            return origin, nodes
    else:
        origin = _origin(local_node_id, capability)
    _remember(_ORIGINS, local_node_id, origin)
    return origin, read(_first_query(origin, requirements, strategy, capability), capability)


def _first_query(origin: Origin, requirements: Resources, strategy: Strategy, capability: str | None) -> Query:
    if strategy.nearest_first and origin.local:
        return _subtree_until_fit(origin, requirements, capability)
    return candidates(origin, requirements, strategy, set(), capability)


def origin_read(local_node_id: str, capability: str | None) -> Origin:
    """The origin alone: a batch reads its nodes by a statement of its own."""
    return _origin(local_node_id, capability)


def node_reread(node_pk: int, capability: str | None) -> NodeSnapshot | None:
    """One node as it is now (after a lost race), its tier unknown (read as a descendant)."""
    columns, rows = _run(*_sql(Node.objects.filter(pk=node_pk).annotate(tier=Value(TIER_DESCENDANT))
                               .values(*SNAPSHOT_FIELDS)))
    return columns.snapshots(rows, capability)[0] if rows else None


def _origin(local_node_id: str, capability: str | None) -> Origin:
    """The local node's row and its peers', in one round trip."""
    columns, rows = _run(_origin_sql(), [local_node_id, local_node_id])
    return _origin_of(columns, rows, capability)


def _read_with_origin(local_node_id: str, query: Query, capability: str | None) -> tuple[Origin, list[NodeSnapshot]]:
    """``_origin`` and ``query``'s nodes, in one round trip."""
    def build():
        sql, params = query.build()
        columns = ", ".join(connection.ops.quote_name(column) for column in SNAPSHOT_FIELDS)
        return (f"{_origin_sql()} UNION ALL SELECT 0, {columns} FROM ({sql}) nodes ORDER BY 1 DESC, depth, node_id",
                (local_node_id, local_node_id, *params))

    columns, rows = _run(*_compiled(("with origin", local_node_id, query.key), build))
    is_origin = columns.at["origin"]
    origin = _origin_of(columns, [row for row in rows if row[is_origin]], capability)
    return origin, columns.snapshots([row for row in rows if not row[is_origin]], capability)


def _origin_of(columns: "_Columns", rows: list[tuple], capability: str | None) -> Origin:
    """The origin from its rows: the local node's (tier local) and its peers' (tier peer)."""
    pk, path, tier = (columns.at[name] for name in ("pk", "path", "tier"))
    local = [row for row in rows if row[tier] == TIER_LOCAL]
    if not local:
        return Origin(None)
    peers = tuple(sorted((row[pk], row[path]) for row in rows if row[tier] == TIER_PEER))
    return Origin(columns.snapshots(local, capability)[0], local[0][path], peers)


@lru_cache
def _origin_sql() -> str:
    """The local node and its peers, their ``SNAPSHOT_FIELDS``, marked ``origin`` = 1."""
    quote = connection.ops.quote_name
    table, links = quote(Node._meta.db_table), quote(Node.peers.through._meta.db_table)

    def columns(tier: int) -> str:
        special = {"pk": f"n.{quote(Node._meta.pk.column)} AS pk", "tier": f"{tier} AS tier"}
        return ", ".join(special.get(column, f"n.{quote(column)}") for column in SNAPSHOT_FIELDS)

    return (f"SELECT 1 AS origin, {columns(TIER_LOCAL)} FROM {table} n WHERE n.node_id = %s "
            f"UNION ALL SELECT 1, {columns(TIER_PEER)} FROM {table} n "
            f"JOIN {links} p ON p.from_node_id = n.id JOIN {table} l ON l.id = p.to_node_id WHERE l.node_id = %s")


# --- the node queries -----------------------------------------------------------------------
def candidates(origin: Origin, requirements: Resources, strategy: Strategy, tried: set[int],
               capability: str | None = None, tier: int | None = None) -> Query:
    """The best ``PREFETCH`` fitting, ready (and capable) nodes in scope (or in one tier of it),
    not yet tried, in the strategy's order (over its sample, if it has one)."""
    def build():
        fitting = scope(origin, tier).filter(_fitting(requirements, capability)).exclude(pk__in=tried)
        if strategy.sample_order:
            return _best_of_sample(fitting, strategy, requirements)
        return _sql(fitting.order_by(*strategy.db_order(requirements)).values(*SNAPSHOT_FIELDS)[:PREFETCH])

    return Query(("candidates", type(strategy), requirements, origin.key, frozenset(tried), capability, tier), build)


def batch_candidates(origin: Origin, requirements: Resources, strategy: Strategy, tried: set[int],
                     capability: str | None, *, limit: int) -> Query:
    """Up to ``limit`` fitting, ready (and capable) nodes in scope not yet tried, in the strategy's
    ``db_order`` over all of them (no sample: a batch fills many nodes, not the best one)."""
    def build():
        fitting = scope(origin).filter(_fitting(requirements, capability)).exclude(pk__in=tried)
        return _sql(fitting.order_by(*strategy.db_order(requirements)).values(*SNAPSHOT_FIELDS)[:limit])

    # Not compiled once: ``tried`` differs from round to round (see ``read``).
    return Query((), build)


def _best_of_sample(fitting, strategy: Strategy, requirements: Resources) -> tuple[str, tuple]:
    """The best ``PREFETCH`` in ``db_order`` of the first ``sample_size`` nodes in ``sample_order``.

    The sample is a derived table carrying each ``db_order`` term as a column, so that ordering
    it reads no row twice."""
    terms, keys = {}, []
    for i, term in enumerate(strategy.db_order(requirements)):
        if isinstance(term, str):
            keys.append(f"{term.lstrip('-')} {'DESC' if term.startswith('-') else 'ASC'}")
        else:
            term = term if isinstance(term, OrderBy) else term.asc()
            terms[f"order_{i}"] = term.expression
            keys.append(f"order_{i} {'DESC' if term.descending else 'ASC'}")
    sample, params = _sql(fitting.annotate(**terms).order_by(*strategy.sample_order)
                          .values(*SNAPSHOT_FIELDS, *terms)[:strategy.sample_size])
    return f"SELECT * FROM ({sample}) sample ORDER BY {', '.join(keys)} LIMIT {PREFETCH}", params


def _subtree_until_fit(origin: Origin, requirements: Resources, capability: str | None) -> Query:
    """The local node, then its descendants nearest first, up to the first that fits: the local
    node is the shallowest node of its subtree, so the (depth, node_id) walk meets it first."""
    def build():
        # depth: the walk starts at the local node's level rather than the root's.
        subtree = Node.objects.filter(path__startswith=origin.path, depth__gte=origin.local.depth).annotate(
            tier=Case(When(pk=origin.local.pk, then=TIER_LOCAL), default=TIER_DESCENDANT))
        return _until_fit(subtree, requirements, capability)

    return Query(("subtree", origin.key, requirements, capability), build)


def tier_until_fit(origin: Origin, tier: int, requirements: Resources, capability: str | None) -> Query:
    """One tier's nodes nearest first, up to the first that fits."""
    return Query(("until fit", origin.key, tier, requirements, capability),
                 lambda: _until_fit(scope(origin, tier), requirements, capability))


def _until_fit(queryset, requirements: Resources, capability: str | None) -> tuple[str, tuple]:
    """``queryset``'s nodes in (depth, node_id) order up to and including the first that fits, at
    most ``EXPLAIN_LIMIT``: it walks that index, and the window keeps the rows after the first
    fitting one from being sent at all."""
    fits = Case(When(_fitting(requirements, capability), then=1), default=0, output_field=IntegerField())
    nearest, params = _sql(
        queryset.annotate(fits=fits).order_by("depth", "node_id").values(*SNAPSHOT_FIELDS, "fits")[:EXPLAIN_LIMIT]
    )
    return (
        "SELECT * FROM (SELECT nearest.*, MAX(fits) OVER (ORDER BY depth, node_id"
        " ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS fit_before"
        f" FROM ({nearest}) nearest) upto WHERE COALESCE(fit_before, 0) = 0 ORDER BY depth, node_id",
        params,
    )


def untried(origin: Origin, tried: set[int]) -> Query:
    """The nearest ``EXPLAIN_LIMIT`` nodes in scope not tried, whatever their state."""
    return Query(("untried", origin.key, frozenset(tried)), lambda: _sql(
        scope(origin).exclude(pk__in=tried).order_by("tier", "depth", "node_id").values(*SNAPSHOT_FIELDS)
        [:EXPLAIN_LIMIT]
    ))


def scope(origin: Origin, tier: int | None = None):
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


def _capable_filter(capability: str | None) -> dict:
    # In the query, not after it: a post-filter of the first few fetched would miss a capable
    # node behind several rounds of incapable ones.
    return {f"capabilities__{capability}__available": True} if capability else {}


def _fitting(requirements: Resources, capability: str | None) -> Q:
    """Nodes that can take the request now: the SQL form of placement's ``_shortfall``."""
    condition = Q(status=NodeStatus.READY, **_capable_filter(capability))
    for name, (capacity, allocated) in RESOURCES.items():
        amount = getattr(requirements, name)
        if amount:
            condition &= Q(**{f"{allocated}__lte": F(capacity) - amount})
    return condition


def _sql(queryset) -> tuple[str, tuple]:
    return queryset.query.sql_with_params()


# --- running them ---------------------------------------------------------------------------
# Compiled statements by everything they are built from, where each column sits in their rows,
# and the origins seen, by local node_id. Building and compiling the ORM query costs several
# times what Postgres needs to run it, and a cluster sees the same few (strategy, request,
# submitting node) shapes again and again.
_COMPILED: dict[tuple, tuple[str, tuple | None]] = {}
_COLUMNS: dict[str, "_Columns"] = {}
_ORIGINS: dict[str, Origin] = {}
_CACHE_MAX = 256


def _remember(cache: dict, key, value) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


def _compiled(key: tuple, build: Callable[[], tuple[str, tuple]]) -> tuple[str, tuple | None]:
    """The statement ``build()`` compiles, compiled only the first time ``key`` is seen."""
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = literal_statement(*build())
        _remember(_COMPILED, key, compiled)
    return compiled


def read(query: Query, capability: str | None) -> list[NodeSnapshot]:
    """A query's nodes; compiled once per key, except a query with no key (built for one use)."""
    statement = _compiled(query.key, query.build) if query.key else literal_statement(*query.build())
    columns, rows = _run(*statement)
    return columns.snapshots(rows, capability)


def _run(sql: str, params) -> tuple["_Columns", list[tuple]]:
    """The rows a statement returns, and where they keep each column (read from its first run:
    psycopg builds a cursor's description anew on each access, at microseconds a column)."""
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        columns = _COLUMNS.get(sql)
        if columns is None:
            columns = _Columns([column[0] for column in cursor.description])
            _remember(_COLUMNS, sql, columns)
        return columns, cursor.fetchall()


_CAPABILITIES = Node._meta.get_field("capabilities")


class _Columns:
    """The positions of the ``SNAPSHOT_FIELDS`` (and any other column) in one statement's rows."""

    def __init__(self, names: list[str]):
        self.at = {name: i for i, name in enumerate(names)}
        self._node = itemgetter(*(self.at[name] for name in ("pk", "node_id", "tier", "depth", "status")))
        # In NAMES order, the order Resources takes them in.
        self._capacity = itemgetter(*(self.at[RESOURCES[name][0]] for name in NAMES))
        self._allocated = itemgetter(*(self.at[RESOURCES[name][1]] for name in NAMES))

    def snapshots(self, rows: list[tuple], capability: str | None) -> list[NodeSnapshot]:
        capabilities = self.at["capabilities"]
        nodes = []
        for row in rows:
            pk, node_id, tier, depth, status = self._node(row)
            capacity = self._capacity(row)
            nodes.append(NodeSnapshot(
                pk=pk, node_id=node_id, tier=tier, depth=depth, status=status,
                capacity=Resources(*capacity),
                free=Resources(*map(sub, capacity, self._allocated(row))),
                # Decoded only when the request needs a capability: nothing else reads them.
                capabilities=(_CAPABILITIES.from_db_value(row[capabilities], None, connection) or {}
                              if capability else {}),
            ))
        return nodes
