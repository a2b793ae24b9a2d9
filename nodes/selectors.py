import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache

from django.conf import settings
from django.db.models import Case, Count, F, FloatField, Max, Prefetch, QuerySet, Sum, TextField, Value, When, Window
from django.db.models.functions import Cast, Greatest, RowNumber

from core.db import sql_column, sql_table
from core.errors import InvalidRequest, NotFound

from .models import RESOURCES, JoinToken, Node, NodeStatus
from .resources import Resources
from .usage import JSONValue, usage_sums, usage_sums_read


def node_get(*, node_id: str) -> Node:
    try:
        return Node.objects.get(node_id=node_id)
    except Node.DoesNotExist:
        raise NotFound(f"node {node_id!r} is not registered", field="node") from None


def node_by_id(node_id: str) -> Node | None:
    """The node registered as ``node_id``, or None: one statement written out once (every
    submission looks up the node it was made at, and building the ORM query cost more than
    running it)."""
    return next(iter(Node.objects.raw(_node_by_id_sql(), [node_id])), None)


@lru_cache(maxsize=1)
def _node_by_id_sql() -> str:
    return f"SELECT * FROM {sql_table(Node)} WHERE {sql_column(Node, 'node_id')} = %s"


def node_find(name: str, *, excluding: str | None = None) -> Node | None:
    """The registered node a name means (its node_id, or the address:port it advertises), or None.

    Never the node ``excluding`` names (an agent looking for its parent): a stale row of its own
    may still advertise the address a config now gives another node. Among several at one
    address, a live one wins. A node that advertises the wildcard 0.0.0.0 (the seed's "listen
    everywhere") answers to loopback names on its port, so configs written for one machine link up."""
    others = Node.objects.exclude(node_id=excluding) if excluding else Node.objects.all()
    found = None if name == excluding else node_by_id(name)
    host, _, port = name.rpartition(":")
    if found is None and port.isdigit():
        hosts = [host]
        if host in {"127.0.0.1", "localhost", "::1", "[::1]"}:
            hosts.append("0.0.0.0")
        candidates = others.filter(address__in=hosts, port=int(port))
        found = (candidates.exclude(status=NodeStatus.OFFLINE).order_by("pk").first()
                 or candidates.order_by("pk").first())
    return found


def key_hash(key: str) -> str:
    """How join tokens and node credentials are kept (sha256 hex): the plain key is shown once."""
    return hashlib.sha256(key.encode()).hexdigest()


def join_token_for_key(*, key: str) -> JoinToken:
    return JoinToken.objects.get(key_hash=key_hash(key))


def node_local() -> Node:
    """The node this control plane treats as "local" (the seed's /api/resources)."""
    return node_get(node_id=settings.CNET_LOCAL_NODE_ID)


def node_list() -> QuerySet[Node]:
    # /api/nodes shows parent, children and peers: fetch them in three queries, not N. Of the
    # children and peers only their names: a page of 100 nodes has thousands of children.
    names = Node.objects.only("id", "node_id", "parent_id")
    return Node.objects.select_related("parent").prefetch_related(
        Prefetch("children", queryset=names), Prefetch("peers", queryset=names.only("id", "node_id")))


def node_largest() -> Node | None:
    """The registered node with the most memory then cpu: named when a request fits nowhere."""
    return Node.objects.order_by("-memory_bytes", "-cpu_millicores", "node_id").first()


def node_largest_free() -> Resources:
    """The most of each resource free on any one ready node (not necessarily the same node)."""
    free = Node.objects.filter(status=NodeStatus.READY).aggregate(
        **{name: Max(F(capacity) - F(allocated)) for name, (capacity, allocated) in RESOURCES.items()}
    )
    return Resources(**{name: free[name] or 0 for name in RESOURCES})


def node_could_ever_hold(*, requirements: Resources) -> bool:
    """Whether any registered, not-offline node could hold this even when empty."""
    return (
        Node.objects.exclude(status=NodeStatus.OFFLINE)
        .filter(
            cpu_millicores__gte=requirements.cpu,
            gpu_count__gte=requirements.gpu,
            memory_bytes__gte=requirements.memory,
            storage_bytes__gte=requirements.storage,
        )
        .exists()
    )


def cluster_stats() -> dict:
    totals = cluster_totals()  # one query, usage summed in SQL, not over every node's JSON in Python
    capacity, allocated = totals["capacity"], totals["allocated"]
    free = Resources(**{name: getattr(capacity, name) - getattr(allocated, name) for name in RESOURCES})
    by_status = dict(
        Node.objects.values("status").annotate(n=Count("id")).values_list("status", "n")
    )
    measured, reporting = totals["measured"], totals["reporting"]
    return {
        "nodes": {status: by_status.get(status, 0) for status in NodeStatus.values}
        | {"total": sum(by_status.values())},
        "capacity": capacity.to_api(),
        "allocated": allocated.to_api(),
        "free": free.to_api(),
        # Measured usage summed over live nodes (memory/disk bytes, cpu as busy cores).
        "usage": {
            "cpu_cores_busy": round(measured["cpu"][0], 2),
            "memory_used_bytes": int(measured["memory"][0]),
            "disk_used_bytes": int(measured["storage"][0]),
            "nodes_reporting": reporting,
        },
    }


# The topology page draws a page of children at a time, at most TREE_BUDGET nodes at first, and
# the paths to at most TREE_MATCHES search matches; the rest loads on demand (node_children).
TREE_PAGE = 50
TREE_BUDGET = 150
TREE_MATCHES = 20


@dataclass
class NodeTree:
    """What the topology page draws: the top of the forest, or the paths to a search's matches.

    Each drawn node carries ``tree_children`` (the children drawn under it), ``children_total``,
    ``children_more`` (how many are not drawn) and where the next page of them starts
    (``more_after``: the last node_id drawn; ``more_skip``: pks drawn out of order). ``roots_more``,
    ``roots_after`` and ``roots_skip`` say the same of the roots."""

    roots: list[Node]
    roots_more: int
    roots_after: str = ""
    roots_skip: list[int] = field(default_factory=list)
    matches: int | None = None  # how many nodes the search matched; None without a search


def node_tree(*, q: str = "", page: int = TREE_PAGE, budget: int = TREE_BUDGET,
              matches_max: int = TREE_MATCHES) -> NodeTree:
    """The topology without ``q``: a page of roots, and under them (in order, while at most
    ``budget`` nodes are drawn) their first page of children; deeper levels stay collapsed.

    With ``q``: the nodes whose node_id contains it (at most ``matches_max``) and every ancestor
    of theirs, read from their materialized paths, each ancestor showing only the children on
    those paths. A node whose parent is not drawn is shown at the top. A bounded number of
    queries whatever the size of the fleet."""
    if q:
        return _node_tree_search(q=q, matches_max=matches_max)
    roots, roots_more = node_children(parent_pk=None, limit=page)
    drawn, opened = len(roots), []
    for root in roots:
        shown = min(root.children_total, page)
        if shown and drawn + shown <= budget:
            opened.append(root)
            drawn += shown
    if opened:
        by_pk = {root.pk: root for root in opened}
        ranked = Node.objects.filter(parent_id__in=by_pk).annotate(
            rank=Window(RowNumber(), partition_by=[F("parent_id")], order_by=F("node_id").asc())
        )
        children = list(ranked.filter(rank__lte=page).prefetch_related("peers").order_by("parent_id", "node_id"))
        _tree_fill(children)
        for child in children:
            by_pk[child.parent_id].tree_children.append(child)
        for root in opened:
            root.children_more = root.children_total - len(root.tree_children)
            root.more_after = root.tree_children[-1].node_id
    return NodeTree(roots=roots, roots_more=roots_more, roots_after=roots[-1].node_id if roots else "")


def node_children(*, parent_pk: int | None, after: str = "", skip: Collection[int] = (),
                  limit: int = TREE_PAGE) -> tuple[list[Node], int]:
    """One page of a node's children (of the roots when ``parent_pk`` is None) in node_id order,
    after ``after`` and leaving out ``skip``, each with ``children_total``; and how many remain."""
    found = Node.objects.filter(parent__isnull=True) if parent_pk is None else Node.objects.filter(parent_id=parent_pk)
    if after:
        found = found.filter(node_id__gt=after)
    if skip:
        found = found.exclude(pk__in=list(skip))
    nodes = list(found.prefetch_related("peers").order_by("node_id")[:limit])
    more = found.count() - len(nodes) if len(nodes) == limit else 0
    _tree_fill(nodes)
    for node in nodes:
        node.more_after = ""
    return nodes, more


def _node_tree_search(*, q: str, matches_max: int) -> NodeTree:
    found = Node.objects.filter(node_id__icontains=q)
    matches = list(found.order_by("depth", "node_id").values_list("pk", "path")[:matches_max])
    total = found.count() if len(matches) == matches_max else len(matches)
    matched = {pk for pk, _path in matches}
    wanted = set(matched)
    for _pk, path in matches:
        wanted.update(int(part) for part in path.strip("/").split("/") if part.isdigit())
    nodes = list(Node.objects.filter(pk__in=wanted).prefetch_related("peers").order_by("depth", "node_id"))
    _tree_fill(nodes)
    by_pk = {node.pk: node for node in nodes}
    roots = []
    for node in nodes:
        node.tree_match = node.pk in matched
        parent = by_pk.get(node.parent_id)
        (parent.tree_children if parent else roots).append(node)
    for node in nodes:
        node.children_more = node.children_total - len(node.tree_children)
        node.more_skip = [child.pk for child in node.tree_children]
    drawn_roots = [node.pk for node in roots if node.parent_id is None]
    roots_more = Node.objects.filter(parent__isnull=True).count() - len(drawn_roots)
    return NodeTree(roots=roots, roots_more=roots_more, roots_skip=drawn_roots, matches=total)


def _tree_fill(nodes: list[Node]) -> None:
    """Each node's children count (one grouped query), nothing drawn under it yet."""
    counts = dict(
        Node.objects.filter(parent_id__in=[node.pk for node in nodes]).order_by()
        .values("parent_id").annotate(n=Count("pk")).values_list("parent_id", "n")
    ) if nodes else {}
    for node in nodes:
        node.tree_children = []
        node.children_total = node.children_more = counts.get(node.pk, 0)
        node.more_after, node.more_skip, node.tree_match = "", [], False


def node_busiest(*, limit: int) -> QuerySet[Node]:
    """The ``limit`` nodes with the largest share of any one resource allocated, fullest first
    (the dashboard's table): a top-N sort in the database; only those rows reach Python."""
    shares = [
        Case(When(**{f"{capacity}__gt": 0},
                  then=Cast(F(allocated), FloatField()) / Cast(F(capacity), FloatField())),
             default=Value(0.0))
        for capacity, allocated in RESOURCES.values()
    ]
    return (Node.objects.select_related("parent").annotate(allocated_share=Greatest(*shares))
            .order_by("-allocated_share", "depth", "node_id")[:limit])


def cluster_totals() -> dict:
    """Capacity, allocated and measured usage summed over live (not offline) nodes, in one query.

    ``measured`` is resource → (used, total) and ``reporting`` the nodes with a sample, as
    ``usage_summed`` adds up the samples (in SQL: in Python it would read every node's JSON)."""
    totals = Node.objects.exclude(status=NodeStatus.OFFLINE).aggregate(
        **{f"capacity_{name}": Sum(capacity) for name, (capacity, _a) in RESOURCES.items()},
        **{f"allocated_{name}": Sum(allocated) for name, (_c, allocated) in RESOURCES.items()},
        **usage_sums(),
    )
    measured, reporting = usage_sums_read(totals)
    return {
        "capacity": Resources(**{name: totals[f"capacity_{name}"] or 0 for name in RESOURCES}),
        "allocated": Resources(**{name: totals[f"allocated_{name}"] or 0 for name in RESOURCES}),
        "measured": measured,
        "reporting": reporting,
    }


def node_filter_labels(queryset: QuerySet[Node], *, selector: str) -> QuerySet[Node]:
    """The nodes of ``queryset`` whose labels match ``selector``, written as Kubernetes writes one:
    comma-separated ``key=value`` (the label has that value) and bare ``key`` (the node has the
    label); all must hold."""
    for number, term in enumerate(part.strip() for part in selector.split(",")):
        if not term:
            continue
        key, equals, value = term.partition("=")
        key, value = key.strip(), value.removeprefix("=").strip()  # "key==value" too
        if not key:
            raise InvalidRequest(f"{term!r} names no label", field="label")
        if not equals:
            queryset = queryset.filter(labels__has_key=key)
            continue
        # An expression, not labels__<key>: a key with "__" in it must not become a lookup.
        alias = f"label_{number}"
        queryset = queryset.alias(**{alias: JSONValue(key, "labels", TextField())})
        queryset = queryset.filter(**{alias: value})
    return queryset


def node_labels_present(*, limit: int = 30, scan: int = 500) -> list[str]:
    """``key=value`` labels nodes carry, sorted, at most ``limit``; read from at most ``scan``
    distinct label sets, so a fleet labelled per machine costs no more than one that is not."""
    pairs = set()
    for labels in Node.objects.order_by().values_list("labels", flat=True).distinct()[:scan]:
        pairs.update(f"{key}={value}" for key, value in (labels or {}).items())
    return sorted(pairs)[:limit]


def node_parents_largest(*, limit: int = 10) -> list[tuple[str, int]]:
    """The nodes with the most children: (node_id, children), most first."""
    rows = (Node.objects.filter(parent__isnull=False).order_by().values("parent__node_id")
            .annotate(n=Count("pk")).order_by("-n", "parent__node_id").values_list("parent__node_id", "n"))
    return list(rows[:limit])
