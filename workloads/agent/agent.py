"""The node agent: one object built from rooms, each a module of one concern.

- membership.py: register, heartbeat (and what its answer says), self-fencing;
- supervision.py: start and stop work, each pass spool logs, enforce limits, report exits;
- reconcile.py: after a restart, match what runs here to what the control plane says;
- client.py: the one conversation with the control plane (the node API), and the spool;
- config.py: ``AgentSettings`` and how they are read.

The agent is a client of the control plane: it opens no database. This module joins the rooms
and owns the shutdown, which needs all of them.

Threads: the Celery worker's threads call ``start``/``look`` (a doorbell only says "ask"), the
main loop calls the ``*_once`` steps, the starts they want run in a starter thread (so that a
burst never holds up a beat), and a thread of its own calls ``fence_once``. ``lock``
guards what is supervised (``handles``, ``starting``, ``accepting``) and is never held across a
request; only the fencing thread takes work out of ``handles`` without it, so that it never
waits on a thread stuck on a dead connection. The state file has a writer lock of its own,
taken before ``lock``.
"""

import logging
import time

from .client import ControlPlane, ControlPlaneError, Refused
from .config import AgentSettings
from .membership import Membership
from .reconcile import Reconciliation
from .supervision import Supervision

logger = logging.getLogger(__name__)


class Agent(Membership, Supervision, Reconciliation):
    def __init__(self, config: AgentSettings, wake=lambda: None, client: ControlPlane | None = None):
        self.config = config
        self.client = client or ControlPlane(config.server, node_id=config.node_id, data_dir=config.data_dir,
                                             join_token=config.join_token, credential_path=config.credential_file)
        Supervision.__init__(self, wake=wake)
        Membership.__init__(self)
        Reconciliation.__init__(self)
        self._ended: list[str] = []

    def look(self, workload_id: str | None = None) -> None:
        """A stop (or any) doorbell: beat now, and do what the answer says."""
        try:
            self.heartbeat_once()
        except (ControlPlaneError, Refused) as error:
            logger.warning("node %s: could not ask the control plane (the next beat will): %s",
                           self.config.node_id, error)

    def abandon(self, why: str) -> None:
        """The control plane refuses this node's credential (staff revoked it): the node is
        offline there and its work handled as lost, so it may already run elsewhere. Every local
        copy is killed now, and nothing more is sent."""
        with self.lock:
            self.accepting = False
            abandoned = list(self.handles.items())
            self.handles.clear()
        for workload_id, supervised in abandoned:
            logger.error("workload %s: killed, its node is no longer in the cluster: %s", workload_id, why)
            supervised.handle.kill()
            supervised.handle.poll()  # reaps it
            supervised.handle.cleanup()

    def begin_shutdown(self) -> None:
        """Stop taking work: starts are ignored, placement stops choosing this node, work not
        started yet is handed back, and running work is marked to stop or handed back."""
        with self.lock:
            if not self.accepting:
                return
            self.accepting = False
        try:
            self._ended = [str(pk) for pk in self.client.drain(epoch=self.epoch,
                                                               policy=self.config.shutdown_policy)["end"]]
        except (ControlPlaneError, Refused) as error:
            logger.warning("node %s: could not tell the control plane it is shutting down: %s",
                           self.config.node_id, error)

    def shutdown(self) -> None:
        """Stop taking work, end or hand back running work per policy, and go offline.

        Each step is isolated, and the node is told to go offline whatever happened before."""
        try:
            self.begin_shutdown()
            with self.lock:
                running = list(self.handles)
            for workload_id in running:
                self._guarded(self._end_for_shutdown, workload_id=workload_id)
            deadline = time.monotonic() + self.config.stop_grace_seconds + 5
            next_beat = 0.0
            while (self.handles or len(self.spool)) and time.monotonic() < deadline:
                if time.monotonic() >= next_beat:  # still alive: don't let liveness declare us lost
                    self.keep_alive()
                    next_beat = time.monotonic() + self.heartbeat_seconds
                self.supervise_once()
                time.sleep(0.1)  # pacing the passes, as the main loop's wait does
        finally:
            try:
                self.client.leave(epoch=self.epoch)
            except (ControlPlaneError, Refused) as error:
                logger.warning("node %s: could not go offline on the control plane: %s", self.config.node_id, error)
            logger.info("node %s: agent stopped", self.config.node_id)

    def _end_for_shutdown(self, *, workload_id: str) -> None:
        supervised = self.handles.get(workload_id)
        if supervised is not None and self.config.shutdown_policy == "stop":
            supervised.stop_requested = True  # so its exit is reported as stopped
        self.stop(workload_id)

    def _guarded(self, step, **kwargs) -> None:
        try:
            step(**kwargs)
        except Exception:
            logger.exception("node %s: shutdown step %s%s failed; going on",
                             self.config.node_id, getattr(step, "__name__", step), kwargs)
