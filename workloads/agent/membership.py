"""Membership: register this node, heartbeat, act on what each answer says, and self-fence when
the control plane has been out of reach too long.

A room of ``Agent`` (agent.py). It owns the agent's standing with the control plane (``epoch``,
the timing the control plane gave, ``last_contact``, ``fenced``); from supervision it uses
``handles``, ``_want_starts``, ``stop``, ``_drop`` and the report spool. It talks only to the
control plane's node API, through ``client`` (client.py): the control plane's clock is the only
one, so the agent measures silence on its own monotonic clock from the last answer it got.
"""

import logging
import time

from django.conf import settings

from nodes.detect import sample_usage
from nodes.resources import MILLICORES_PER_CORE

from ..models import OnDisconnect, WorkloadStatus, disconnect_action
from .client import ControlPlane, ControlPlaneError, Refused
from .config import AgentSettings
from .supervision import Supervised

logger = logging.getLogger(__name__)


def stops_when_cut_off(supervised: Supervised) -> bool:
    """Whether a silent agent stops this work: by its ``on_disconnect``, else by its restart policy
    (work the control plane would replace once this node is declared offline is killed first, so
    that it never runs twice; other work keeps running and spooling here)."""
    return disconnect_action(on_disconnect=supervised.on_disconnect,
                             restart_policy=supervised.restart_policy) == OnDisconnect.STOP


class Membership:
    config: AgentSettings
    client: ControlPlane
    handles: dict[str, Supervised]
    accepting: bool

    def __init__(self) -> None:
        self.epoch: int | None = None
        # What the control plane said last (its answers win over the defaults).
        self.heartbeat_seconds = self.config.heartbeat_seconds
        self.offline_after_seconds = float(settings.CNET_OFFLINE_AFTER_SECONDS)
        self.last_contact = time.monotonic()  # when the last request the control plane answered began
        # How long the last beat (or the registration) waited for its answer: the next beat says.
        self.beat_answer_seconds: float | None = None
        self.fenced: dict[str, Supervised] = {}

    @property
    def fence_after(self) -> float:
        """Silent this long, the agent kills replaceable work: one beat before the control plane
        may declare the node offline and run that work elsewhere."""
        offline = self.offline_after_seconds
        return max(offline - self.heartbeat_seconds, offline / 2)

    def _registration(self, *, parent: str | None) -> dict:
        capacity = self.config.capacity
        return dict(
            node_id=self.config.node_id, address=self.config.address, port=self.config.port,
            capacity={"cpu": capacity.cpu / MILLICORES_PER_CORE, "gpu": capacity.gpu,
                      "memory": capacity.memory, "storage": capacity.storage},
            parent=parent, peers=list(self.config.peers), labels=self.config.labels,
            capabilities=self.config.capabilities,
        )

    def register(self) -> dict:
        """Register (or update) this node. A parent or peer that has not registered yet is linked
        by the control plane once it does; a parent link that would make a cycle is dropped."""
        contact = time.monotonic()
        try:
            answer = self.client.register(self._registration(parent=self.config.parent))
        except Refused as error:
            if error.status != 400 or not self.config.parent:
                raise
            logger.error("node %s: ignoring parent %r: %s", self.config.node_id, self.config.parent, error.body)
            answer = self.client.register(self._registration(parent=None))
        self.epoch = answer["epoch"]
        self._obey_timing(answer)
        self.last_contact = contact
        self.beat_answer_seconds = round(time.monotonic() - contact, 3)  # the first beat tells it
        return answer

    def _obey_timing(self, answer: dict) -> None:
        self.heartbeat_seconds = float(answer.get("heartbeat_seconds") or self.heartbeat_seconds)
        self.offline_after_seconds = float(answer.get("offline_after_seconds") or self.offline_after_seconds)

    def heartbeat_once(self) -> bool:
        """Beat, then do what the answer says: kill what is no longer ours, stop what a user
        asked to stop, start the work placed here. A lost doorbell costs one beat at most."""
        with self.lock:
            running = sorted(set(self.handles) | set(self.starting))
        usage = sample_usage(storage_path=self.config.data_dir) | {"workloads_running": len(running)}
        contact = time.monotonic()
        try:
            answer = self.client.heartbeat(epoch=self.epoch, usage=usage, running=running, attempts=1,
                                           previous_answer_seconds=self.beat_answer_seconds)
        except Refused as error:
            if error.status != 409:
                raise
            self.last_contact = contact
            logger.warning("node %s: heartbeat refused (another agent registered since); re-registering",
                           self.config.node_id)
            self.register()
            return True
        self.last_contact = contact
        self.beat_answer_seconds = round(time.monotonic() - contact, 3)  # told with the next beat
        self._obey_timing(answer)
        self._report_fenced()
        for workload_id in answer["kill"]:
            self._drop(str(workload_id), "the control plane no longer runs it here")
        if answer["status"] == "offline" and self.accepting:
            # We were cut off long enough to be declared offline: what was handed on is in
            # ``kill`` (killed above); rejoin with what is still ours.
            logger.warning("node %s: was declared offline; rejoining", self.config.node_id)
            self.register()
            self._save_state()
            return True
        for workload_id in answer["stop"]:
            self.stop(str(workload_id))
        if answer["work"]:
            self._want_starts(answer["work"], more=answer.get("more_work", False))
        self.flush()
        return True

    def fence_once(self) -> bool:
        """Kill the local copies of the work that stops when cut off (``stops_when_cut_off``) once
        the control plane has answered nothing for ``fence_after`` seconds; other work keeps
        running and spooling its output. Runs in a thread of its own and touches neither the
        network nor the lock."""
        silent = time.monotonic() - self.last_contact
        if silent < self.fence_after or not self.handles:
            return False
        fenced = False
        for workload_id in list(self.handles):
            supervised = self.handles.get(workload_id)
            if supervised is None or not stops_when_cut_off(supervised):
                continue
            supervised = self.handles.pop(workload_id, None)
            if supervised is not None:
                logger.error("workload %s: node %s has not reached the control plane for %.1fs; killing the local "
                             "copy before it can be declared lost and run elsewhere (self-fencing, on_disconnect: "
                             "stop)", workload_id, self.config.node_id, silent)
                supervised.handle.kill()
                self.fenced[workload_id] = supervised
                fenced = True
        return fenced

    def _report_fenced(self) -> None:
        """Back in touch: report fenced work as lost (if the control plane has not), so its
        restart policy applies (a ``never`` one stays lost, saying why)."""
        for workload_id, supervised in list(self.fenced.items()):
            supervised.handle.poll()  # reaps the killed process
            supervised.handle.cleanup()
            self._report(workload_id, supervised, WorkloadStatus.LOST,
                         reason=f"node {self.config.node_id} could not reach the control plane for "
                                f"{self.fence_after:g}s; its agent stopped the local copy (self-fencing, "
                                f"on_disconnect: stop)")
            self.fenced.pop(workload_id, None)

    def keep_alive(self) -> None:
        """A beat that only says "still here" (while shutting down)."""
        try:
            self.client.heartbeat(epoch=self.epoch, usage={"shutting_down": True}, running=sorted(self.handles),
                                  attempts=1)
            self.last_contact = time.monotonic()
        except (ControlPlaneError, Refused) as error:
            logger.warning("node %s: keep-alive beat failed: %s", self.config.node_id, error)
