"""Control loops run by celery beat on the ``control`` queue. Each step is idempotent and
safe to run twice at once: every write is a conditional UPDATE."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from nodes.liveness import nodes_check_liveness
from nodes.models import NodeStatus

from .dispatch import dispatch_start
from .models import Workload, WorkloadStatus
from .services import (
    schedules_run_due,
    workload_counts_fold,
    workload_mark_redispatched,
    workloads_lose_on_offline_nodes,
    workloads_place_pending,
    workloads_reconnected,
)

logger = logging.getLogger(__name__)


def tick() -> dict:
    return {
        "lost": mark_lost_on_offline_nodes(),
        "redispatched": redispatch_unacknowledged(),
        "placed": workloads_place_pending(),
        "scheduled": schedules_run_due(),
        "counts_folded": workload_counts_fold(),
    }


# A liveness pass that finds the previous one older than this many ticks takes it that the control
# plane was away (nodes could not beat either) and hands out fresh deadlines before judging anyone.
# Beat drops ticks queued longer than 2 ticks, so a running loop's passes are at most about 2 ticks
# plus one pass apart; 3 ticks (6 s) is past that, and an outage shorter than it leaves a node at
# least 15 - 5 - 6 = 4 s of its deadline to reach the control plane again.
FAILOVER_AFTER_TICKS = 3


def mark_lost_on_offline_nodes() -> int:
    """Judge liveness, then lose the work of offline nodes (what chose ``on_disconnect: keep``
    waits for its node instead) and note the kept work whose node is back."""
    nodes_check_liveness(failover_after_seconds=FAILOVER_AFTER_TICKS * settings.CNET_CONTROL_TICK_SECONDS)
    lost = workloads_lose_on_offline_nodes()
    workloads_reconnected()
    return lost


def redispatch_unacknowledged() -> int:
    """Ring again for scheduled work no agent has picked up (the broker may have lost it)."""
    cutoff = timezone.now() - timedelta(seconds=settings.CNET_REDISPATCH_AFTER_SECONDS)
    stale = Workload.objects.filter(
        Q(dispatched_at__lt=cutoff) | Q(dispatched_at__isnull=True, scheduled_at__lt=cutoff),
        status=WorkloadStatus.SCHEDULED,
        node__status=NodeStatus.READY,
    )
    count = 0
    for workload_id, node_id in stale.values_list("pk", "node__node_id"):
        logger.info("workload %s: not acknowledged, dispatching again", workload_id)
        if dispatch_start(workload_id=workload_id, node_id=node_id):
            workload_mark_redispatched(workload_id=workload_id)
            count += 1
    return count
