"""How often a node beats and how long a silent one keeps its work, from the size of the fleet.

The control plane takes at most ``CNET_MAX_HEARTBEATS_PER_SECOND`` beats a second whatever the
fleet's size (Nomad's ``max_heartbeats_per_second``): each node is told to beat every
``max(CNET_HEARTBEAT_SECONDS, live nodes / rate)`` seconds, and the deadlines written with its beat
are derived from that interval, so a node is judged by the interval it was handed, not by one
computed later for a fleet that has since grown or shrunk. Pure functions, plus one count of live
nodes taken at most every ``COUNT_CACHE_SECONDS`` per process, never per beat.
"""

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Q
from django.utils import timezone

from .db import prepared_cursor
from .models import Node, NodeCredential, NodeStatus

# A late beat's room (the grace past its interval before the node is offline) is the small
# fleet's, CNET_OFFLINE_AFTER_SECONDS - CNET_HEARTBEAT_SECONDS (10 s by default, Nomad's
# heartbeat_grace), or this share of a long interval, whichever is more: beats queue longer at a
# busy control plane. With the defaults (5 s, 15 s, 250/s): 1,000 nodes beat every 5 s and go
# offline after 15 s (declared within 15 + one 2 s control tick = 17 s, under the 20 s aim);
# 10,000 beat every 40 s and go offline after 40 + 12 = 52 s (declared within 54 s, under 60 s).
GRACE_PER_INTERVAL = 0.3
# A process counts live nodes at most this often: the count moves the interval by 1/rate s a node.
COUNT_CACHE_SECONDS = 5.0
# A node heard from this recently counts as beating even if it was declared offline: its agent
# registers again and beats on. Counting only the nodes not offline fed back on itself: an
# overloaded control plane let beats run late, nodes went offline, the count fell, the interval
# handed out shrank and the load grew (seen with 10,000 simulated nodes: intervals of 5 s).
COUNTED_SILENCE = timedelta(minutes=10)


@dataclass(frozen=True)
class HeartbeatTiming:
    """What a node is handed with its beat: when to beat next, when it turns unhealthy and when it
    is declared offline if nothing more is heard from it (seconds from the beat)."""

    interval_seconds: float
    unhealthy_after_seconds: float
    offline_after_seconds: float

    def deadlines(self, now: datetime) -> dict[str, datetime]:
        """The Node columns a beat at ``now`` writes (the control plane's clock)."""
        return {"unhealthy_at": now + timedelta(seconds=self.unhealthy_after_seconds),
                "offline_at": now + timedelta(seconds=self.offline_after_seconds)}


def heartbeat_interval(*, live_nodes: int, base_seconds: float, max_per_second: float) -> float:
    """Seconds between one node's beats: the base, stretched so the fleet sends at most
    ``max_per_second`` beats a second in all."""
    return max(base_seconds, live_nodes / max_per_second)


def heartbeat_timing_for(
    *, live_nodes: int, base_seconds: float, max_per_second: float, unhealthy_after_beats: int,
    offline_after_seconds: float,
) -> HeartbeatTiming:
    """The timing a fleet of ``live_nodes`` hands each node: offline after its interval and a
    grace (``GRACE_PER_INTERVAL``), never sooner than ``offline_after_seconds``; unhealthy after
    that many intervals, but never after offline (at a large fleet offline comes first)."""
    interval = heartbeat_interval(live_nodes=live_nodes, base_seconds=base_seconds, max_per_second=max_per_second)
    grace = max(offline_after_seconds - base_seconds, interval * GRACE_PER_INTERVAL)
    offline = max(offline_after_seconds, interval + grace)
    return HeartbeatTiming(interval_seconds=interval, unhealthy_after_seconds=min(interval * unhealthy_after_beats,
                                                                                  offline),
                           offline_after_seconds=offline)


def heartbeat_write(*, usage: dict, timing: HeartbeatTiming, now: datetime, epoch: int | None = None,
                    node_pk: int | None = None, node_id: str | None = None,
                    credential_hash: str | None = None, rtt_seconds: float | None = None) -> str | None:
    """The one statement a beat costs: the usage, the control plane's time, the deadlines of
    ``timing``, how long the agent's previous beat took to be answered (``rtt_seconds``) and
    unhealthy → ready, ``RETURNING`` the status that leaves (an offline node stays
    offline). None when nothing matched: no such node, not ``epoch``, or (``credential_hash``
    given) that credential is not the node's or is revoked, so a cached credential lookup can
    never let a revoked one beat. Written out once, not built by the ORM on every beat: building
    the ORM UPDATE and the read after it cost more than running them (bench/fleet_heartbeat_cost.py).
    """
    db = connections[DEFAULT_DB_ALIAS]
    deadlines = timing.deadlines(now)
    params = [Node._meta.get_field("usage").get_db_prep_value(usage, db),
              *(db.ops.adapt_datetimefield_value(at) for at in (now, deadlines["unhealthy_at"],
                                                                 deadlines["offline_at"])),
              None if rtt_seconds is None else float(rtt_seconds), NodeStatus.UNHEALTHY.value, NodeStatus.READY.value,
              node_pk if node_pk is not None else node_id]
    if epoch is not None:
        params.append(epoch)
    if credential_hash is not None:
        params.append(credential_hash)
    with prepared_cursor() as cursor:
        cursor.execute(_heartbeat_sql(by_pk=node_pk is not None, epoch=epoch is not None,
                                      credential=credential_hash is not None), params)
        row = cursor.fetchone()
    return row[0] if row else None


@lru_cache
def _heartbeat_sql(*, by_pk: bool, epoch: bool, credential: bool) -> str:
    """``UPDATE node SET usage, last_heartbeat, deadlines, answer time, status WHERE ... RETURNING status``
    (Postgres, and SQLite from 3.35)."""
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    node, pk = quote(Node._meta.db_table), quote(Node._meta.pk.column)
    status = quote("status")
    where = [f"{node}.{pk if by_pk else quote('node_id')} = %s"]
    if epoch:
        where.append(f"{quote('agent_epoch')} = %s")
    if credential:
        credentials = quote(NodeCredential._meta.db_table)
        where.append(f"EXISTS (SELECT 1 FROM {credentials} WHERE {credentials}.{quote('node_id')} = {node}.{pk} "
                     f"AND {quote('key_hash')} = %s AND {quote('revoked_at')} IS NULL)")
    return (f"UPDATE {node} SET {quote('usage')} = %s, {quote('last_heartbeat')} = %s, "
            f"{quote('unhealthy_at')} = %s, {quote('offline_at')} = %s, {quote('beat_rtt_seconds')} = %s, "
            f"{status} = CASE WHEN {status} = %s THEN %s ELSE {status} END "
            f"WHERE {' AND '.join(where)} RETURNING {status}")


_count_lock = threading.Lock()
_count: tuple[float, int] | None = None  # (time.monotonic() it expires, live nodes)


def live_node_count() -> int:
    """Nodes that beat: not offline, or heard from in the last ``COUNTED_SILENCE``; counted at most
    every ``COUNT_CACHE_SECONDS`` in this process. A stale count only moves the interval handed out
    by a few nodes' worth."""
    global _count
    cached = _count
    now = time.monotonic()
    if cached is not None and now < cached[0]:
        return cached[1]
    with _count_lock:  # one count per expiry, not one per thread that noticed it
        if _count is not None and now < _count[0]:
            return _count[1]
        since = timezone.now() - COUNTED_SILENCE
        count = Node.objects.filter(~Q(status=NodeStatus.OFFLINE) | Q(last_heartbeat__gte=since)).count()
        _count = (time.monotonic() + COUNT_CACHE_SECONDS, count)
        return count


def live_node_count_forget() -> None:
    """Count afresh on the next beat (tests that change the fleet's size call it)."""
    global _count
    _count = None


def heartbeat_timing_now() -> HeartbeatTiming:
    """The timing handed out now, from the settings and the (cached) size of the fleet."""
    return heartbeat_timing_for(
        live_nodes=live_node_count(),
        base_seconds=settings.CNET_HEARTBEAT_SECONDS,
        max_per_second=settings.CNET_MAX_HEARTBEATS_PER_SECOND,
        unhealthy_after_beats=settings.CNET_UNHEALTHY_AFTER_BEATS,
        offline_after_seconds=settings.CNET_OFFLINE_AFTER_SECONDS,
    )
