"""The node agent: one object built from rooms, each a module of one concern.

- membership.py: register, heartbeat, late links, self-fencing;
- supervision.py: start and stop work, each pass ship logs, enforce limits, report exits;
- reconcile.py: after a restart, match what runs here to the database (the state file);
- config.py: ``AgentSettings`` and how they are read.

This module joins them and owns the shutdown, which needs all of them.

Threads: the Celery worker's threads call ``start``/``stop`` (they return at once), the main
loop calls the ``*_once`` steps, and a thread of its own calls ``fence_once``. ``lock`` guards
what is supervised (``handles``, ``starting``, ``accepting``) and is never held across a
database call; only the fencing thread takes work out of ``handles`` without it, so that it
never waits on a thread stuck on a dead connection. The state file has a writer lock of its
own, taken before ``lock``.
"""

import logging
import time

from django.db import close_old_connections

from nodes.liveness import node_heartbeat
from nodes.services import node_mark_offline, node_set_schedulable

from ..models import Workload, WorkloadStatus
from ..services import workload_note, workload_request_stop, workload_requeue
from .config import AgentSettings
from .membership import Membership
from .reconcile import Reconciliation
from .supervision import Supervision

logger = logging.getLogger(__name__)


class Agent(Membership, Supervision, Reconciliation):
    def __init__(self, config: AgentSettings, wake=lambda: None):
        self.config = config
        Supervision.__init__(self, wake=wake)
        Membership.__init__(self)
        Reconciliation.__init__(self)

    def begin_shutdown(self) -> None:
        """Stop taking work: starts are ignored and placement stops choosing this node."""
        with self.lock:
            self.accepting = False
        node_set_schedulable(node_id=self.config.node_id, schedulable=False)

    def shutdown(self) -> None:
        """Stop taking work, end or hand back running work per policy, and go offline.

        Each step is isolated (a workload deleted meanwhile must not keep the node from going
        offline), and the node is marked offline whatever happened before."""
        try:
            self.begin_shutdown()
            # Work placed here but not started yet never ran: hand it back whatever the policy.
            for workload_id in Workload.objects.filter(
                node__node_id=self.config.node_id, status=WorkloadStatus.SCHEDULED
            ).values_list("pk", flat=True):
                self._guarded(workload_requeue, workload_id=workload_id,
                              reason=f"handed back: agent on {self.config.node_id} shut down")
            with self.lock:
                running = list(self.handles)
            for workload_id in running:
                self._guarded(self._end_for_shutdown, workload_id=workload_id)
            deadline = time.monotonic() + self.config.stop_grace_seconds + 5
            next_beat = 0.0
            while self.handles and time.monotonic() < deadline:
                close_old_connections()
                if time.monotonic() >= next_beat:  # still alive: don't let liveness declare us lost
                    self._guarded(node_heartbeat, node_id=self.config.node_id, usage={"shutting_down": True},
                                  epoch=self.epoch)
                    next_beat = time.monotonic() + self.config.heartbeat_seconds
                self.supervise_once()
                time.sleep(0.1)
        finally:
            close_old_connections()
            node_mark_offline(node_id=self.config.node_id, epoch=self.epoch)
            logger.info("node %s: agent stopped", self.config.node_id)

    def _end_for_shutdown(self, *, workload_id: str) -> None:
        if not Workload.objects.filter(pk=workload_id).exists():
            self._drop(workload_id, "its workload was deleted")
            return
        workload_note(workload_id=workload_id,
                      reason=f"agent on {self.config.node_id} shutting down ({self.config.shutdown_policy})")
        if self.config.shutdown_policy == "requeue":
            # Hand it back first, so the kill below is not reported as its end.
            workload_requeue(workload_id=workload_id, reason=f"handed back: agent on {self.config.node_id} shut down")
        else:
            workload_request_stop(workload_id=workload_id)  # so its exit is reported as stopped
        self.stop(workload_id)

    def _guarded(self, step, **kwargs) -> None:
        try:
            step(**kwargs)
        except Exception:
            logger.exception("node %s: shutdown step %s%s failed; going on",
                             self.config.node_id, getattr(step, "__name__", step), kwargs)
