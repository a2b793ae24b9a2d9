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

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .models import Node, NodeStatus

# Offline after this many intervals (never sooner than CNET_OFFLINE_AFTER_SECONDS). With the
# default rate, 250/s: 10,000 nodes beat every 40 s and go offline after 56 s of silence (a stopped
# node is declared within 56 s + one 2 s control tick = 58 s, under the 60 s aim), leaving a late
# beat 16 s; 1,000 nodes beat every 5 s and the 18 s floor governs (within 20 s with the tick).
OFFLINE_AFTER_INTERVALS = 1.4
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
    """The timing a fleet of ``live_nodes`` hands each node. Unhealthy after that many intervals,
    but never after offline (at a large fleet the offline deadline comes first: 1.4 < 3 intervals)."""
    interval = heartbeat_interval(live_nodes=live_nodes, base_seconds=base_seconds, max_per_second=max_per_second)
    offline = max(offline_after_seconds, interval * OFFLINE_AFTER_INTERVALS)
    return HeartbeatTiming(interval_seconds=interval, unhealthy_after_seconds=min(interval * unhealthy_after_beats,
                                                                                  offline),
                           offline_after_seconds=offline)


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
