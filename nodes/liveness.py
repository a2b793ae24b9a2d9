"""Heartbeats and liveness on the control plane's clock: the one writer of a beat, and the loop that
turns nodes past their deadlines unhealthy, then offline (after an outage of its own, it first gives
every node a fresh deadline)."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Value
from django.utils import timezone

from core.instruments import HEARTBEATS

from .heartbeats import HeartbeatTiming, heartbeat_timing_now, heartbeat_write
from .models import ControlLoopState, Node, NodeStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Beat:
    """A recorded heartbeat: the node's status after it, the control plane's time of it, and the
    timing it was handed (its deadlines were written from that)."""

    status: str
    at: datetime
    timing: HeartbeatTiming


def node_heartbeat_apply(*, usage: dict, epoch: int | None = None, node_pk: int | None = None,
                         node_id: str | None = None, credential_hash: str | None = None,
                         rtt_seconds: float | None = None) -> Beat | None:
    """The one writer of a heartbeat, for the database path and the node API alike: one UPDATE
    (``heartbeat_write``) records the usage, the time, the deadlines of the interval handed out
    and unhealthy → ready, and returns the status. None when no node matches (unknown, ``epoch``
    is not its current agent's, or ``credential_hash`` is not its unrevoked credential). An
    offline node stays offline: its work was lost, so its agent registers again.
    """
    now = timezone.now()
    timing = heartbeat_timing_now()
    status = heartbeat_write(usage=usage, timing=timing, now=now, epoch=epoch, node_pk=node_pk, node_id=node_id,
                             credential_hash=credential_hash, rtt_seconds=rtt_seconds)
    HEARTBEATS.labels(outcome="recorded" if status is not None else "refused").inc()
    return Beat(status=status, at=now, timing=timing) if status is not None else None


def node_heartbeat(*, node_id: str, usage: dict, epoch: int | None = None) -> str | None:
    """Record measured usage (``node_heartbeat_apply``); a silent-then-back node becomes ready again.

    Returns the node's status, or None when the heartbeat is from a superseded agent (older
    epoch) or the node is unknown. An ``offline`` answer tells the agent its work was lost.
    """
    beat = node_heartbeat_apply(node_id=node_id, usage=usage, epoch=epoch)
    return beat.status if beat is not None else None


LIVENESS_LOOP = "liveness"
# Answer lag: the quantile of recent beats' answer times that stretches the deadlines (a few slow
# links must not hold back everyone's judgement; at 0.9 the slowest tenth of a loaded fleet's
# beats still came too late, bench/fleet.py: 32 of 1,000 nodes), the beats that count (recent
# ones: a silent node's last answer time is old news), and the most it stretches them by.
LAG_QUANTILE = 0.99
LAG_WINDOW = timedelta(minutes=1)
MAX_LAG_SECONDS = 300.0


def nodes_check_liveness(*, failover_after_seconds: float) -> list[str]:
    """Nodes past their unhealthy deadline turn unhealthy, past their offline deadline offline.
    Returns the node_ids that just went offline.

    The deadlines were written with each node's beat, from the interval it was handed. A pass that
    finds the previous one more than ``failover_after_seconds`` ago (the control plane was away, so
    nodes could not beat either) first gives every node a fresh deadline (``_liveness_failover``),
    so a control plane's own restart loses no work (Nomad's failover heartbeat TTL).
    Safe to run twice at once: the record of a pass and every move are conditional UPDATEs.

    A node is judged late only by a control plane that keeps up: every deadline is stretched by
    how long beats now take to be answered (``answer_lag_seconds``), as Lifeguard (HashiCorp's
    memberlist) stretches its timeouts while the member judging is itself slow. Without it, an
    overloaded control plane answered beats late, declared their nodes offline, and their
    re-registrations loaded it more (bench/fleet.py at 1,000 nodes: every node, again and again).
    """
    now = timezone.now()
    with transaction.atomic():
        state, _created = ControlLoopState.objects.get_or_create(name=LIVENESS_LOOP)
        previous = state.last_run_at
        failover = previous is None or (now - previous).total_seconds() > failover_after_seconds
        # Claim this pass: of two passes that read the same previous run, one records itself and
        # the other (its view is stale: the winner may be handing out fresh deadlines) stops.
        claimed = ControlLoopState.objects.filter(pk=state.pk, last_run_at=previous).update(
            last_run_at=now, **({"failed_over_at": now} if failover else {}))
        if not claimed:
            return []
        if failover:
            _liveness_failover(now=now, previous=previous, since=state.failed_over_at)
    lag = answer_lag_seconds(now=now)
    if lag > 1.0:
        logger.warning("liveness: beats take %.1f s to be answered; deadlines are judged %.1f s late", lag, lag)
    judged = now - timedelta(seconds=lag)
    Node.objects.filter(status=NodeStatus.READY, unhealthy_at__lt=judged).update(status=NodeStatus.UNHEALTHY)
    due = Node.objects.exclude(status=NodeStatus.OFFLINE).filter(offline_at__lt=judged)
    gone = []
    for node_id, silent_since in due.values_list("node_id", "last_heartbeat"):
        # Re-checked in the UPDATE: a beat since the read moved the deadline, and keeps the node.
        if due.filter(node_id=node_id).update(status=NodeStatus.OFFLINE):
            logger.warning("node %s offline: no heartbeat since %s, past its deadline", node_id,
                           silent_since.isoformat(timespec="seconds") if silent_since else "it registered")
            gone.append(node_id)
    return gone


def answer_lag_seconds(*, now: datetime) -> float:
    """How long beats take to be answered now: the ``LAG_QUANTILE`` of the answer times that the
    beats of the last ``LAG_WINDOW`` reported (each agent times its previous beat on its own
    monotonic clock, so no clock's skew is in it), at most ``MAX_LAG_SECONDS``; 0 when none did."""
    times = sorted(Node.objects.exclude(status=NodeStatus.OFFLINE)
                   .filter(last_heartbeat__gte=now - LAG_WINDOW, beat_rtt_seconds__isnull=False)
                   .values_list("beat_rtt_seconds", flat=True))
    if not times:
        return 0.0
    return min(times[int((len(times) - 1) * LAG_QUANTILE)], MAX_LAG_SECONDS)


def _liveness_failover(*, now: datetime, previous: datetime | None, since: datetime | None) -> None:
    """Every node not offline that has beaten since the last failover (``since``; all of them at
    the first) gets its own period again, counted from now: one UPDATE.

    A node's period is ``deadline - last_heartbeat``, what its last beat was handed. A node that
    has not beaten since the last failover already had one fresh period and keeps that deadline, so
    a loop that keeps coming late (every pass a failover) postpones a silent node's offline once,
    never for ever; it is also why the difference is still its period: nobody is refreshed twice
    without beating in between.
    """
    now_value = Value(now, output_field=DateTimeField())
    live = Node.objects.exclude(status=NodeStatus.OFFLINE).filter(last_heartbeat__isnull=False,
                                                                    offline_at__isnull=False)
    if since is not None:
        live = live.filter(last_heartbeat__gt=since)
    refreshed = live.update(
        unhealthy_at=ExpressionWrapper(now_value + (F("unhealthy_at") - F("last_heartbeat")),
                                       output_field=DateTimeField()),
        offline_at=ExpressionWrapper(now_value + (F("offline_at") - F("last_heartbeat")), output_field=DateTimeField()),
    )
    logger.warning("liveness: %s; %s nodes get fresh deadlines before any is judged",
                   "first pass" if previous is None else
                   f"no pass for {(now - previous).total_seconds():.1f}s (the control plane was away)", refreshed)
