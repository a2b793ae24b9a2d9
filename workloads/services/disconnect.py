"""Work on nodes that went offline: lost (then replaced, as its restart policy says), unless it
chose ``on_disconnect: keep``. Kept work stays where it is, with a reason saying its node is
unreachable, so it never runs twice: its agent keeps it running and spooling its output, and its
reports reconcile it once it is back. A node that will not come back (its credential revoked, its
row removed) loses it after all. Nomad's ``max_client_disconnect`` holds such work "unknown"; here
it stays in its state (one state machine) and only its reason says so.
"""

import logging

from django.conf import settings

from nodes.models import NodeStatus

from ..models import ACTIVE, OnDisconnect, Workload, WorkloadStatus
from .lifecycle import workload_note, workload_transition

logger = logging.getLogger(__name__)
# How a kept workload's reason begins while its node is offline (what finds it once it is back).
UNREACHABLE = "node unreachable: "


def workloads_lose_on_offline_nodes() -> int:
    """Mark lost the scheduled and running work of offline (or removed) nodes, but hold what
    chose ``keep`` on a node that may still come back. Returns how many were lost."""
    lost = 0
    orphaned = Workload.objects.filter(status__in=ACTIVE, node__isnull=True).values_list("pk", flat=True)
    for workload_id in orphaned:  # its node's row was removed: it can never report again
        lost += workload_transition(workload_id=workload_id, to=WorkloadStatus.LOST, reason="its node was removed")
    stranded = Workload.objects.filter(status__in=ACTIVE, node__status=NodeStatus.OFFLINE)
    for workload_id, status, on_disconnect, node_pk, node_id, heard, deadline, revoked_at in stranded.values_list(
        "pk", "status", "on_disconnect", "node_id", "node__node_id", "node__last_heartbeat", "node__offline_at",
        "node__credential__revoked_at",
    ):
        if on_disconnect == OnDisconnect.KEEP and revoked_at is None:
            _hold(workload_id=workload_id, status=status, node_pk=node_pk, node_id=node_id, heard=heard)
            continue
        if revoked_at is not None:
            reason = f"node {node_id} will not come back: its credential was revoked"
        else:
            # The silence it was allowed: what its last beat was handed (a failover's fresh deadline
            # counts from the control plane's return, so it reads longer), else the floor.
            allowed = ((deadline - heard).total_seconds() if heard and deadline and deadline > heard
                       else settings.CNET_OFFLINE_AFTER_SECONDS)
            reason = f"node {node_id} went offline (no heartbeat for {round(allowed, 1):g}s)"
        lost += workload_transition(workload_id=workload_id, to=WorkloadStatus.LOST, reason=reason)
    return lost


def _hold(*, workload_id, status: str, node_pk: int, node_id: str, heard) -> None:
    """Say once (reason and event) that kept work waits for its unreachable node."""
    since = f"silent since {heard:%Y-%m-%d %H:%M:%S}Z" if heard else "never heard from"
    where = "running there" if status == WorkloadStatus.RUNNING else "placed there"
    reason = (f"{UNREACHABLE}{node_id} {since}; kept {where} (on_disconnect: keep), not replaced until its "
              f"agent is back or its credential is revoked")
    unsaid = Workload.objects.filter(pk=workload_id, status=status, node_id=node_pk).exclude(
        reason__startswith=UNREACHABLE)
    if unsaid.update(reason=reason):
        workload_note(workload_id=workload_id, reason=reason, node_id=node_id)
        logger.warning("workload %s: %s", workload_id, reason)


def workloads_reconnected() -> int:
    """Kept work whose node is back: its reason says so (the agent's reports since, if any, have
    moved it on already). Returns how many."""
    back = (Workload.objects.filter(status__in=ACTIVE, on_disconnect=OnDisconnect.KEEP,
                                    reason__startswith=UNREACHABLE, node__isnull=False)
            .exclude(node__status=NodeStatus.OFFLINE))
    count = 0
    for workload_id, status, node_id, reason in back.values_list("pk", "status", "node__node_id", "reason"):
        news = f"node {node_id} is reachable again; kept on it (on_disconnect: keep), its agent's reports reconcile it"
        # Conditional on the reason read: a report that moved it meanwhile wrote its own.
        if Workload.objects.filter(pk=workload_id, status=status, reason=reason).update(reason=news):
            workload_note(workload_id=workload_id, reason=news, node_id=node_id)
            count += 1
    return count
