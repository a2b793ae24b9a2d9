"""Writes on nodes: membership, allocation and health. Every claim is one conditional UPDATE."""

import logging
from collections.abc import Iterable
from datetime import timedelta
from functools import lru_cache

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from core.errors import InvalidRequest, NotFound, StateConflict

from .db import prepared_cursor
from .models import RESOURCES, Node, NodeStatus
from .resources import Resources
from .selectors import node_find

logger = logging.getLogger(__name__)


def node_allocate(*, node_pk: int, requirements: Resources) -> bool:
    """Take ``requirements`` from the node if they fit right now; False if someone else won.

    The WHERE re-checks free capacity inside the UPDATE, so two racing claims can never
    both succeed; the CheckConstraints back it up whatever code writes the row.
    """
    claims = [(RESOURCES[name], getattr(requirements, name)) for name in RESOURCES if getattr(requirements, name)]
    if not claims:
        return Node.objects.filter(pk=node_pk, status=NodeStatus.READY).exists()
    amounts = [amount for _columns, amount in claims]
    with prepared_cursor() as cursor:
        cursor.execute(
            _allocate_sql(tuple(columns for columns, _amount in claims)),
            [*amounts, node_pk, NodeStatus.READY.value, *amounts],
        )
        return cursor.rowcount == 1


@lru_cache
def _allocate_sql(columns: tuple[tuple[str, str], ...]) -> str:
    """``UPDATE node SET allocated = allocated + x ... WHERE pk, ready and allocated <= capacity - x``.

    Written out once per set of claimed resources, not built by the ORM on every call: placement
    claims on every submission, and building the ORM UPDATE cost twice what running it does.
    """
    quote = connection.ops.quote_name
    sets = ", ".join(f"{quote(allocated)} = {quote(allocated)} + %s" for _capacity, allocated in columns)
    fits = " AND ".join(f"{quote(allocated)} <= {quote(capacity)} - %s" for capacity, allocated in columns)
    return (f"UPDATE {quote(Node._meta.db_table)} SET {sets} "
            f"WHERE {quote(Node._meta.pk.column)} = %s AND {quote('status')} = %s AND {fits}")


def node_release(*, node_pk: int, requirements: Resources) -> None:
    """Give back what ``node_allocate`` took. Callers guarantee once (a won status transition)."""
    changes = {}
    guard = Q(pk=node_pk)
    for name, (_capacity, allocated) in RESOURCES.items():
        amount = getattr(requirements, name)
        if amount:
            guard &= Q(**{f"{allocated}__gte": amount})
            changes[allocated] = F(allocated) - amount
    if changes and Node.objects.filter(guard).update(**changes) != 1:
        # Only reachable if allocations were edited by hand; never go negative.
        logger.error("node %s: release of %s found less allocated", node_pk, requirements)


@transaction.atomic
def node_register(
    *,
    node_id: str,
    address: str = "127.0.0.1",
    port: int = 8080,
    capacity: Resources,
    parent: str | None = None,
    peers: Iterable[str] = (),
    labels: dict | None = None,
    capabilities: dict | None = None,
) -> Node:
    """Create or update a node and its links; bumps its agent epoch and marks it ready.

    ``parent`` and ``peers`` name registered nodes by node_id or by advertised address:port.
    """
    node, _created = Node.objects.select_for_update().get_or_create(node_id=node_id)
    node.address, node.port = address, port
    for name, (column, allocated) in RESOURCES.items():
        # Capacity never shrinks below what running work holds (the CheckConstraint).
        setattr(node, column, max(getattr(capacity, name), getattr(node, allocated)))
    if labels is not None:
        node.labels = labels
    if capabilities is not None:
        node.capabilities = capabilities
    node.status = NodeStatus.READY
    node.last_heartbeat = timezone.now()
    node.agent_epoch = F("agent_epoch") + 1
    node.save()
    node.refresh_from_db()
    node_set_parent(node=node, parent=node_resolve(parent, excluding=node_id) if parent else None)
    if peers:
        node.peers.add(*[node_resolve(peer, excluding=node_id) for peer in peers if peer])
    logger.info("node %s registered (epoch %s)", node.node_id, node.agent_epoch)
    return node


def node_resolve(name: str, *, excluding: str | None = None) -> Node:
    """``node_find``, refusing a name that means no registered node."""
    node = node_find(name, excluding=excluding)
    if node is None:
        raise InvalidRequest(f"no registered node is named or listens at {name!r}", field="node")
    return node


def node_link(*, node_id: str, parent: Node | None = None, peers: Iterable[Node] = ()) -> None:
    """Add links an agent could not make when it registered (the other node came up later)."""
    node = Node.objects.get(node_id=node_id)
    if parent is not None and node.parent_id != parent.pk:
        node_set_parent(node=node, parent=parent)
    peers = [peer for peer in peers if peer.pk != node.pk]
    if peers:
        node.peers.add(*peers)


@transaction.atomic
def node_set_parent(*, node: Node, parent: Node | None) -> None:
    """Move a node (and its subtree) under ``parent``, keeping materialized paths right."""
    old_prefix = node.path if node.path != "/" else None
    if parent is not None and (parent.pk == node.pk or (old_prefix and parent.path.startswith(old_prefix))):
        raise InvalidRequest(f"{parent} cannot be the parent of {node}: that makes a cycle", field="parent")
    new_path = (parent.path if parent else "/") + f"{node.pk}/"
    Node.objects.filter(pk=node.pk).update(parent=parent, path=new_path, depth=new_path.count("/") - 2)
    if old_prefix and old_prefix != new_path:
        for child in Node.objects.filter(path__startswith=old_prefix).exclude(pk=node.pk):
            child.path = new_path + child.path[len(old_prefix):]
            child.depth = child.path.count("/") - 2
            child.save(update_fields=["path", "depth"])
    node.refresh_from_db()


def node_heartbeat(*, node_id: str, usage: dict, epoch: int | None = None) -> str | None:
    """Record measured usage; a silent-then-back node becomes ready again.

    Returns the node's status, or None when the heartbeat is from a superseded agent (older
    epoch) or the node is unknown. An ``offline`` answer tells the agent its work was lost.
    """
    match = Q(node_id=node_id)
    if epoch is not None:
        match &= Q(agent_epoch=epoch)
    now = timezone.now()
    updated = Node.objects.filter(match).update(usage=usage, last_heartbeat=now)
    if not updated:
        return None
    # Unhealthy nodes recover on their own; offline ones re-register (their work was lost).
    Node.objects.filter(match, status=NodeStatus.UNHEALTHY).update(status=NodeStatus.READY)
    return Node.objects.filter(match).values_list("status", flat=True).first()


def node_set_schedulable(*, node_id: str, schedulable: bool) -> bool:
    """Drain a node (no new work) or make it schedulable again."""
    if schedulable:
        return Node.objects.filter(node_id=node_id, status=NodeStatus.DRAINING).update(
            status=NodeStatus.READY
        ) == 1
    return Node.objects.filter(node_id=node_id, status__in=[NodeStatus.READY, NodeStatus.UNHEALTHY]).update(
        status=NodeStatus.DRAINING
    ) == 1


@transaction.atomic
def node_delete(*, node_id: str) -> None:
    """Remove a node that holds no work; its children become roots of their own trees.

    A node with anything allocated holds scheduled or running work, which would be left
    active with no node, out of reach of the liveness loop: drain it and let that work end
    first. The check is the WHERE of an UPDATE that locks the row (Postgres) or the database
    (SQLite) until the delete commits, so a claim racing the delete either lands first (and
    the delete is refused) or finds no node.
    """
    idle = Q(**{allocated: 0 for _capacity, allocated in RESOURCES.values()})
    if not Node.objects.filter(idle, node_id=node_id).update(status=NodeStatus.OFFLINE):
        node = Node.objects.filter(node_id=node_id).first()
        if node is None:
            raise NotFound(f"no node {node_id!r}")
        held = ", ".join(f"{column} {getattr(node, column)}" for _capacity, column in RESOURCES.values()
                         if getattr(node, column))
        raise StateConflict(f"node {node_id} holds work ({held} allocated): drain it and let its work end first")
    node = Node.objects.get(node_id=node_id)
    for child in Node.objects.filter(parent=node):
        node_set_parent(node=child, parent=None)
    node.delete()
    logger.info("node %s deleted", node_id)


def node_mark_offline(*, node_id: str, epoch: int | None = None) -> bool:
    match = Q(node_id=node_id) & ~Q(status=NodeStatus.OFFLINE)
    if epoch is not None:
        match &= Q(agent_epoch=epoch)
    return Node.objects.filter(match).update(status=NodeStatus.OFFLINE) == 1


def nodes_check_liveness(
    *, heartbeat_seconds: float, unhealthy_after_beats: int, offline_after_seconds: float
) -> list[str]:
    """Silent nodes turn unhealthy, then offline. Returns the node_ids that just went offline.

    Idempotent and safe to run twice at once: each move is a conditional UPDATE.
    """
    now = timezone.now()
    unhealthy_before = now - timedelta(seconds=heartbeat_seconds * unhealthy_after_beats)
    offline_before = now - timedelta(seconds=offline_after_seconds)
    Node.objects.filter(status=NodeStatus.READY, last_heartbeat__lt=unhealthy_before).update(
        status=NodeStatus.UNHEALTHY
    )
    gone = []
    for node_id in Node.objects.filter(
        status__in=[NodeStatus.UNHEALTHY, NodeStatus.DRAINING, NodeStatus.READY],
        last_heartbeat__lt=offline_before,
    ).values_list("node_id", flat=True):
        if node_mark_offline(node_id=node_id):
            logger.warning("node %s offline: no heartbeat for %ss", node_id, offline_after_seconds)
            gone.append(node_id)
    return gone
