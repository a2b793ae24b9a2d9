"""The control plane's side of membership for the node API: a node registers itself and beats.

Times are the control plane's (``timezone.now()``): an agent sends none, so liveness and the
fencing deadline it is told are measured by one clock.
"""

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from core.errors import Forbidden, StateConflict
from nodes.heartbeats import HeartbeatTiming
from nodes.liveness import node_heartbeat_apply
from nodes.models import Node
from nodes.resources import Resources
from nodes.services import node_credential_refused, node_mark_offline, node_register, node_set_schedulable

from .dispatch import request_pending_placement_on_commit
from .models import Workload, WorkloadStatus
from .selectors import node_work, node_work_states
from .services import workload_note, workload_request_stop, workload_requeue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat answers: the node's status, the control plane's time, the timing it was
    handed (when to beat next, when it is declared offline), the local workloads
    that must die (they are no longer scheduled or running here), those a user asked to stop, and
    the work scheduled here that the agent does not run yet."""

    status: str
    at: datetime
    timing: HeartbeatTiming
    kill: list[UUID]
    stop: list[UUID]
    work: list[Workload]
    more_work: bool


def node_register_own(
    *, node: Node, node_id: str, address: str, port: int, capacity: Resources, parent: str | None = None,
    peers: Iterable[str] = (), labels: dict | None = None, capabilities: dict | None = None,
    timing: HeartbeatTiming,
) -> Node:
    """Register the node a credential belongs to (``node``), never another: ``node_id`` must be its.
    Its deadlines come from ``timing``, the timing the answer hands it."""
    if node_id != node.node_id:
        raise Forbidden(f"this credential is node {node.node_id}'s: it cannot register {node_id!r}", field="node_id")
    registered = node_register(node_id=node_id, address=address, port=port, capacity=capacity, parent=parent,
                               peers=peers, labels=labels, capabilities=capabilities, timing=timing)
    # A node (re)joined: pending work may fit now (rung only if some waits: a fleet's registration
    # storm queued the control worker's liveness ticks behind thousands of empty passes).
    request_pending_placement_on_commit()
    return registered


# The most workloads one answer hands an agent to start (its own START_BURST): the rest follow
# in the next answer it asks for at once.
WORK_BATCH = 100


def node_heartbeat_record(*, node: Node, credential_hash: str, epoch: int, usage: dict,
                          running: Collection[UUID], previous_answer_seconds: float | None = None) -> Heartbeat:
    """Record a node's beat (``nodes.liveness.node_heartbeat_apply``: one UPDATE of its usage, the
    control plane's time, the deadlines of the interval it is handed, and unhealthy → ready, which
    matches only while ``credential_hash`` is the node's unrevoked credential), then read what
    the answer lists. An offline node stays offline: its work was handed on, so its agent kills
    what it runs and registers again.

    ``epoch`` is the one its agent got when it registered; an older one means another agent has
    registered for the node since (or this one restarted), so the beat is refused with
    ``StateConflict`` and nothing is written; a credential revoked since it was looked up gets
    ``Unauthorized``."""
    beat = node_heartbeat_apply(node_pk=node.pk, epoch=epoch, usage=usage, credential_hash=credential_hash,
                                rtt_seconds=previous_answer_seconds)
    if beat is None:
        node_credential_refused(node=node, credential_hash=credential_hash)
        raise StateConflict(f"epoch {epoch} is not node {node.node_id}'s current one: another agent registered "
                            "for it since; register again (POST /api/node/register)", field="epoch")
    running = set(running)
    here = node_work_states(node_pk=node.pk)
    to_start = [pk for pk, status, _asked in here if status == WorkloadStatus.SCHEDULED and pk not in running]
    placed = {pk for pk, _status, _asked in here}
    return Heartbeat(
        status=beat.status, at=beat.at, timing=beat.timing,
        kill=sorted((pk for pk in running if pk not in placed), key=str),
        stop=[pk for pk, status, asked in here if pk in running and status == WorkloadStatus.RUNNING and asked],
        # Most beats start nothing: the details of what to start are read only when there is some,
        # and a batch at a time (an array's thousands placed here are not all read on every beat).
        work=node_work(node_pk=node.pk, ids=to_start[:WORK_BATCH]) if to_start else [],
        more_work=len(to_start) > WORK_BATCH,
    )


def heartbeat_timing(timing: HeartbeatTiming) -> dict:
    """How often the control plane wants this node's beats, and how long it keeps its work when
    silent: the timing its deadlines were just written from, so an agent fencing itself one beat
    before ``offline_after_seconds`` does so before the control plane can hand its work on."""
    return {"heartbeat_seconds": timing.interval_seconds, "offline_after_seconds": timing.offline_after_seconds}


def node_drain_own(*, node: Node, epoch: int, policy: str) -> list[UUID]:
    """A node's agent is shutting down: placement stops choosing the node, work placed there that
    has not started is handed back whatever the policy, and running work is either handed back
    (``requeue``, so the kill that follows is not its end) or marked to stop (``stop``, so its
    exit is reported as stopped). Returns the running workloads the agent must now end."""
    _own_epoch(node=node, epoch=epoch)
    node_set_schedulable(node_id=node.node_id, schedulable=False)
    end = []
    for workload in node_work(node_pk=node.pk):
        if workload.status == WorkloadStatus.SCHEDULED:
            workload_requeue(workload_id=workload.pk, reason=f"handed back: agent on {node.node_id} shut down")
            continue
        end.append(workload.pk)
        workload_note(workload_id=workload.pk, reason=f"agent on {node.node_id} shutting down ({policy})")
        if policy == "requeue":
            workload_requeue(workload_id=workload.pk, reason=f"handed back: agent on {node.node_id} shut down")
        else:
            workload_request_stop(workload_id=workload.pk)
    return end


def node_leave_own(*, node: Node, epoch: int) -> str:
    """The node's agent has stopped: the node goes offline (if that agent is still its current one)."""
    node_mark_offline(node_id=node.node_id, epoch=epoch)
    return Node.objects.filter(pk=node.pk).values_list("status", flat=True).get()


def _own_epoch(*, node: Node, epoch: int) -> None:
    if not Node.objects.filter(pk=node.pk, agent_epoch=epoch).exists():
        raise StateConflict(f"epoch {epoch} is not node {node.node_id}'s current one: another agent registered "
                            "for it since", field="epoch")
