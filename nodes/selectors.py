import hashlib

from django.conf import settings
from django.db.models import Count, F, Max, QuerySet, Sum

from core.errors import NotFound

from .models import RESOURCES, JoinToken, Node, NodeStatus
from .resources import Resources
from .usage import usage_summed


def node_get(*, node_id: str) -> Node:
    try:
        return Node.objects.get(node_id=node_id)
    except Node.DoesNotExist:
        raise NotFound(f"node {node_id!r} is not registered", field="node") from None


def node_find(name: str, *, excluding: str | None = None) -> Node | None:
    """The registered node a name means (its node_id, or the address:port it advertises), or None.

    Never the node ``excluding`` names (an agent looking for its parent): a stale row of its own
    may still advertise the address a config now gives another node. Among several at one
    address, a live one wins. A node that advertises the wildcard 0.0.0.0 (the seed's "listen
    everywhere") answers to loopback names on its port, so configs written for one machine link up."""
    others = Node.objects.exclude(node_id=excluding) if excluding else Node.objects.all()
    found = others.filter(node_id=name).first()
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
    # /api/nodes shows parent, children and peers: fetch them in three queries, not N.
    return Node.objects.select_related("parent").prefetch_related("children", "peers")


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
    totals = Node.objects.exclude(status=NodeStatus.OFFLINE).aggregate(
        **{f"capacity_{name}": Sum(capacity) for name, (capacity, _a) in RESOURCES.items()},
        **{f"allocated_{name}": Sum(allocated) for name, (_c, allocated) in RESOURCES.items()},
    )
    capacity = Resources(**{name: totals[f"capacity_{name}"] or 0 for name in RESOURCES})
    allocated = Resources(**{name: totals[f"allocated_{name}"] or 0 for name in RESOURCES})
    free = Resources(**{name: getattr(capacity, name) - getattr(allocated, name) for name in RESOURCES})
    by_status = dict(
        Node.objects.values("status").annotate(n=Count("id")).values_list("status", "n")
    )
    measured, reporting = usage_summed(Node.objects.exclude(status=NodeStatus.OFFLINE).values_list("usage", flat=True))
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



def node_tree() -> list[Node]:
    """The topology as a forest: roots in order, each node's ``tree_children`` filled in.

    One query (plus one for peers): materialized paths sort parents before their children.
    A node whose parent is missing from the rows (deleted meanwhile) is shown as a root.
    """
    nodes = list(Node.objects.prefetch_related("peers").order_by("depth", "node_id"))
    by_pk = {node.pk: node for node in nodes}
    roots = []
    for node in nodes:
        node.tree_children = []
    for node in nodes:
        parent = by_pk.get(node.parent_id)
        (parent.tree_children if parent else roots).append(node)
    return roots
