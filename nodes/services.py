"""Writes on nodes: membership, allocation and health. Every claim is one conditional UPDATE."""

import logging
import re
import secrets
from collections.abc import Iterable
from datetime import timedelta
from functools import lru_cache

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from core.db import sql_column, sql_table
from core.errors import Forbidden, InvalidRequest, NotFound, StateConflict, Unauthorized

from .db import prepared_cursor
from .heartbeats import HeartbeatTiming, heartbeat_timing_now
from .models import RESOURCES, JoinToken, Node, NodeCredential, NodeStatus
from .resources import Resources
from .selectors import key_hash, node_find, node_get

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
    timing: HeartbeatTiming | None = None,
) -> Node:
    """Create or update a node and its links; bumps its agent epoch and marks it ready.

    ``parent`` and ``peers`` name nodes by node_id or by advertised address:port. A name that
    means no registered node yet is kept (``pending_parent``, ``pending_peers``) and linked the
    moment that node registers; so are the nodes that were waiting for this one. Its deadlines
    come from ``timing`` (what the caller hands the node; the fleet's current timing if None).
    """
    if parent == node_id:
        raise InvalidRequest(f"{node_id} cannot be its own parent", field="parent")
    _registrations_serialized(node_id=node_id, names_others=bool(parent or any(peers)))
    node, _created = Node.objects.select_for_update().get_or_create(node_id=node_id)
    node.address, node.port = address, port
    for name, (column, allocated) in RESOURCES.items():
        # Capacity never shrinks below what running work holds (the CheckConstraint).
        setattr(node, column, max(getattr(capacity, name), getattr(node, allocated)))
    if labels is not None:
        node.labels = labels
    if capabilities is not None:
        node.capabilities = capabilities
    found_parent = _registered(node_find(parent, excluding=node_id)) if parent else None
    found_peers, waiting_peers = [], []
    for name in dict.fromkeys(peer for peer in peers if peer and peer != node_id):
        found = _registered(node_find(name, excluding=node_id))
        if found is None:
            waiting_peers.append(name)
        else:
            found_peers.append(found)
    node.pending_parent = parent if parent and found_parent is None else ""
    node.pending_peers = waiting_peers
    node.status = NodeStatus.READY
    node.last_heartbeat = timezone.now()
    for column, deadline in (timing or heartbeat_timing_now()).deadlines(node.last_heartbeat).items():
        setattr(node, column, deadline)
    node.agent_epoch = F("agent_epoch") + 1
    node.save()
    node.refresh_from_db()
    node_set_parent(node=node, parent=found_parent)
    if found_peers:
        node.peers.add(*found_peers)
    _link_waiting_for(node)
    if node.pending_parent or node.pending_peers:
        logger.info("node %s: waiting for %s to register", node.node_id,
                    ", ".join(filter(None, [node.pending_parent, *node.pending_peers])))
    logger.info("node %s registered (epoch %s)", node.node_id, node.agent_epoch)
    return node


def _registered(node: Node | None) -> Node | None:
    """A row a join made is not in the tree until its agent registers (it has no path yet): a
    link to it waits, as to a node not seen at all, and is made when it registers."""
    return node if node is not None and node.agent_epoch > 0 else None


# pg_advisory_xact_lock key of node registrations ("cnetreg" in ASCII).
REGISTRATION_LOCK = 0x636E6574726567


def _registrations_serialized(*, node_id: str, names_others: bool) -> None:
    """Registrations that may link nodes run one at a time, to the end of their transaction.

    Two nodes that name each other and register at once would otherwise each miss the other
    (neither sees the other's uncommitted row), both keep the name pending, and neither is
    linked. SQLite serializes writers already (IMMEDIATE transactions); on Postgres a
    transaction-scoped advisory lock does. A registration that names no node, while no node
    waits for one and none is this node's child, changes no other row: it takes the lock shared,
    so a fleet of such nodes registers side by side (one at a time, 10,000 agents queued behind
    each other's commits, and a wave of re-registrations held every web thread, beats starving).
    """
    if connection.vendor != "postgresql":
        return
    # Two reads, not one OR: each is then answered by an index (``node_pending_links``; the
    # parent's), where their OR scanned every node on each registration of a fleet's.
    linking = (names_others or Node.objects.filter(~Q(pending_parent="") | ~Q(pending_peers=[])).exists()
               or Node.objects.filter(parent__node_id=node_id).exists())
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_advisory_xact_lock{'' if linking else '_shared'}(%s)", [REGISTRATION_LOCK])


def _link_waiting_for(node: Node) -> None:
    """Link every node whose pending parent or peer names ``node`` (by node_id or address:port,
    as ``node_find`` resolves that name for the waiting node), and forget those names."""
    # Locked: a node that began waiting after a shared registration looked (it waited for that
    # one's lock) may be seen by two shared ones at once; the second reads the first's update.
    waiting = (Node.objects.select_for_update().filter(~Q(pending_parent="") | ~Q(pending_peers=[]))
               .exclude(pk=node.pk).order_by("pk"))
    for other in waiting:
        parent_name = other.pending_parent
        if parent_name and _names(parent_name, node, waiting=other):
            try:
                node_set_parent(node=other, parent=node)
                logger.info("node %s: linked to its parent %s, which just registered", other.node_id, node.node_id)
            except InvalidRequest as error:  # a cycle: refused as a registration naming it would be
                logger.error("node %s: cannot link parent %s: %s", other.node_id, node.node_id, error)
            parent_name = ""
        peer_names = [name for name in other.pending_peers if not _names(name, node, waiting=other)]
        if len(peer_names) < len(other.pending_peers):
            other.peers.add(node)
            logger.info("node %s: linked to its peer %s, which just registered", other.node_id, node.node_id)
        if (parent_name, peer_names) != (other.pending_parent, other.pending_peers):
            Node.objects.filter(pk=other.pk).update(pending_parent=parent_name, pending_peers=peer_names)


def _names(name: str, node: Node, *, waiting: Node) -> bool:
    found = node_find(name, excluding=waiting.node_id)
    return found is not None and found.pk == node.pk


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


# --- joining and credentials ------------------------------------------------------------------
# Keys are shown once and kept only as sha256: a stolen database gives no working key. A hash
# lookup on a unique index is the comparison, so no key is ever compared byte by byte.

JOIN_TOKEN_PREFIX = "cnetjoin_"
NODE_CREDENTIAL_PREFIX = "cnetnode_"
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
JOIN_TOKEN_MAX_TTL_SECONDS = 366 * 86400  # longer than a year: make one that never expires instead
# How stale NodeCredential.last_used_at may get: authenticating writes it at most this often.
CREDENTIAL_TOUCH_SECONDS = 60
HOW_TO_JOIN = ("ask staff for a join token (python manage.py create_join_token, or Make a join token "
               "on the console's Nodes page)")
CREDENTIAL_REFUSED = ("Unknown or revoked node credential. An agent gets a credential by joining once with a join "
                      f"token: {HOW_TO_JOIN}.")


def _new_key(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


_TTL = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def ttl_seconds_parse(text: str) -> float | None:
    """``30s``, ``15m``, ``1h``, ``2d`` (a bare number is seconds) or ``never`` (None)."""
    text = text.strip().lower()
    if text == "never":
        return None
    match = _TTL.fullmatch(text)
    if match is None or float(match[1]) <= 0:
        raise InvalidRequest(f"{text!r} is not a duration such as 30s, 15m, 1h, 2d or never", field="ttl")
    return float(match[1]) * _TTL_UNITS[match[2]]


def join_token_create(*, ttl_seconds: float | None = 3600, uses: int | None = 1, created_by=None) -> str:
    """Make a join token; returns the plain key, which is shown once and stored only hashed.

    ``ttl_seconds`` None: it never expires; ``uses`` None: any number of nodes may join with it.
    """
    if ttl_seconds is not None and (isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float)
                                    or not 0 < ttl_seconds <= JOIN_TOKEN_MAX_TTL_SECONDS):
        raise InvalidRequest(f"must be a number of seconds from 1 to {JOIN_TOKEN_MAX_TTL_SECONDS}, or null for never",
                             field="ttl_seconds")
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int) or uses < 1):
        raise InvalidRequest("must be a positive whole number, or null for unlimited", field="uses")
    key = _new_key(JOIN_TOKEN_PREFIX)
    expires_at = timezone.now() + timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None
    token = JoinToken.objects.create(key_hash=key_hash(key), expires_at=expires_at, uses_left=uses,
                                     created_by=created_by)
    logger.info("join token %s made by %s (expires %s, uses %s)", token.pk, created_by or "a command",
                expires_at or "never", "unlimited" if uses is None else uses)
    return key


def join_token_revoke(*, key: str) -> bool:
    """Refuse the join token ``key`` from now on (credentials got with it stay valid). False if it
    was unknown or revoked already."""
    usable = JoinToken.objects.filter(key_hash=key_hash(key), revoked_at__isnull=True)
    return bool(usable.update(revoked_at=timezone.now()))


def node_id_validate(node_id) -> str:
    if not isinstance(node_id, str) or not NODE_ID_PATTERN.fullmatch(node_id):
        raise InvalidRequest("must be 1 to 128 characters of letters, digits and _ . : -", field="node_id")
    return node_id


@transaction.atomic
def node_join(*, token: str, node_id: str) -> str:
    """Spend one use of a join token on a new credential for ``node_id``; returns the plain key.

    Creates the node's row if it has none yet (offline, no capacity, no address: its agent's
    registration fills those in). A node that already holds an unrevoked credential is refused,
    so a join token cannot take over a running node: staff revoke its credential first.
    """
    node_id_validate(node_id)
    now = timezone.now()
    usable = JoinToken.objects.filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now),
        Q(uses_left__isnull=True) | Q(uses_left__gt=0),
        key_hash=key_hash(token) if isinstance(token, str) else "",
        revoked_at__isnull=True,
    )
    # A token of unlimited uses is only read: written, its one row would be locked by every join
    # to the end of its transaction, and a fleet joining at once would join one node at a time.
    # A limited one is claimed in the UPDATE's WHERE (as node_allocate's): of racing joins on a
    # last use, exactly one counts a row.
    if not (usable.filter(uses_left__isnull=True).exists()
            or usable.filter(uses_left__gt=0).update(uses_left=F("uses_left") - 1) == 1):
        raise Forbidden(f"join token refused: {_join_token_refusal(token, now)}; {HOW_TO_JOIN}", field="token")
    node, created = Node.objects.get_or_create(
        node_id=node_id,
        defaults={"status": NodeStatus.OFFLINE, "address": "", "port": 0},  # answers to no address yet
    )
    key = _new_key(NODE_CREDENTIAL_PREFIX)
    fresh = {"key_hash": key_hash(key), "created_at": now, "revoked_at": None, "last_used_at": None}
    # A revoked credential is replaced in place (one row per node); an unrevoked one stays.
    if not NodeCredential.objects.filter(node=node, revoked_at__isnull=False).update(**fresh):
        try:
            with transaction.atomic():
                NodeCredential.objects.create(node=node, **fresh)
        except IntegrityError:  # it has a credential (or a racing join just made one)
            raise StateConflict(
                f"node {node_id} already has a credential: staff revoke it first (POST /api/nodes/{node_id}/revoke "
                f"or Revoke credential on its console page) before another agent may join as {node_id}",
                field="node_id",
            ) from None
    logger.info("node %s joined with a join token%s", node_id, " (new node)" if created else "")
    return key


def _join_token_refusal(token, now) -> str:
    found = JoinToken.objects.filter(key_hash=key_hash(token)).first() if isinstance(token, str) else None
    if found is None:
        return "no such token"
    if found.revoked_at is not None:
        return "it was revoked"
    if found.expires_at is not None and found.expires_at <= now:
        return "it has expired"
    return "it has been used up"


def node_credential_authenticate(*, key: str, cached: bool = False) -> Node | None:
    """The node whose unrevoked credential ``key`` is, else None.

    ``cached`` (heartbeats only): the lookup is kept in this process and ``last_used_at`` is not
    written (the node's ``last_heartbeat`` says when it beat), so a beat reads and writes nothing
    to authenticate. That is safe only because the beat's one UPDATE re-checks the credential
    (``heartbeat_write``), and a refused beat forgets the lookup (``node_credential_refused``)."""
    if not isinstance(key, str) or not key.startswith(NODE_CREDENTIAL_PREFIX):
        return None
    digest = key_hash(key)
    if cached and (node := _credentials_seen.get(digest)) is not None:
        return node
    now = timezone.now()
    stale = now - timedelta(seconds=CREDENTIAL_TOUCH_SECONDS)
    found = Node.objects.raw(_credential_node_sql(), [connection.ops.adapt_datetimefield_value(stale), digest])
    node = next(iter(found), None)
    if node is None:
        return None
    if cached:
        if len(_credentials_seen) >= CREDENTIALS_SEEN_MAX:
            _credentials_seen.clear()
        _credentials_seen[digest] = node
        return node
    if node.credential_stale:
        # At most once a minute per node, and conditional, so racing requests write it once.
        NodeCredential.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale),
                                      pk=node.credential_pk).update(last_used_at=now)
    return node


@lru_cache(maxsize=1)
def _credential_node_sql() -> str:
    """The node of an unrevoked credential (by its key's hash), with the credential's pk and
    whether its ``last_used_at`` is older than a time: one statement written out once, as every
    node request but a beat sends it (building the ORM query cost twice what running it does)."""
    def column(name: str) -> str:
        return f"c.{sql_column(NodeCredential, name)}"

    used = column("last_used_at")
    return (f"SELECT n.*, {column('id')} AS credential_pk, ({used} IS NULL OR {used} < %s) AS credential_stale "
            f"FROM {sql_table(NodeCredential)} c JOIN {sql_table(Node)} n "
            f"ON n.{sql_column(Node, 'id')} = {column('node')} "
            f"WHERE {column('key_hash')} = %s AND {column('revoked_at')} IS NULL")


# Heartbeats' credential lookups (key hash -> its node as read then: trust only pk and node_id).
# Bounded: past this many, it starts afresh (10,000 nodes fit many times over).
CREDENTIALS_SEEN_MAX = 100_000
_credentials_seen: dict[str, Node] = {}


def node_credential_refused(*, node: Node, credential_hash: str) -> None:
    """A beat with the credential of ``credential_hash`` (``key_hash``) matched nothing: forget its
    cached lookup, and raise Unauthorized if it is no longer ``node``'s unrevoked credential
    (otherwise the beat's epoch was stale)."""
    _credentials_seen.pop(credential_hash, None)
    if not NodeCredential.objects.filter(node=node, key_hash=credential_hash, revoked_at__isnull=True).exists():
        raise Unauthorized(CREDENTIAL_REFUSED)


@transaction.atomic
def node_credential_revoke(*, node_id: str) -> bool:
    """Refuse the node's credential from now on and mark the node offline, so the control loop
    handles its work as lost on its next tick. False if it held no unrevoked credential
    (nothing changes then); NotFound for an unknown node."""
    node = node_get(node_id=node_id)
    if not NodeCredential.objects.filter(node=node, revoked_at__isnull=True).update(revoked_at=timezone.now()):
        return False
    node_mark_offline(node_id=node_id)
    logger.warning("node %s: credential revoked; node marked offline", node_id)
    return True
