"""Membership: register this node, heartbeat, link a parent or peers that came up later, and
self-fence when the database has been out of reach too long.

A room of ``Agent`` (agent.py). It owns the agent's standing with the control plane (``epoch``,
``last_contact``, ``pending_links``, ``fenced``); from supervision it reads ``handles`` and
calls ``drop_stale`` when this node was declared offline.
"""

import logging
import time

from django.conf import settings

from core.errors import InvalidRequest
from nodes.detect import sample_usage
from nodes.liveness import node_heartbeat
from nodes.models import Node, NodeStatus
from nodes.selectors import node_find
from nodes.services import node_link, node_register

from ..dispatch import request_pending_placement
from ..models import ACTIVE, WorkloadStatus
from ..services import workload_transition
from .config import AgentSettings
from .supervision import Supervised

logger = logging.getLogger(__name__)


class Membership:
    config: AgentSettings
    handles: dict[str, Supervised]
    accepting: bool

    def __init__(self) -> None:
        self.epoch: int | None = None
        # Self-fencing (fence_once): one heartbeat before the control plane may declare this
        # node offline and run its work elsewhere, a host that cannot reach the database kills
        # that work itself; it could not learn of the decision until it is back in touch.
        offline = settings.CNET_OFFLINE_AFTER_SECONDS
        self.fence_after = max(offline - self.config.heartbeat_seconds, offline / 2)
        self.last_contact = time.monotonic()  # when the last heartbeat the database took began
        self.fenced: dict[str, Supervised] = {}
        # Parent/peer names that named no registered node yet: linked on a later heartbeat.
        self.pending_links: list[tuple[str, str]] = []

    def register(self) -> Node:
        """Register (or update) this node. A parent or peer that has not registered yet does
        not stop the agent: it is linked by a later heartbeat, once it has come up."""
        contact = time.monotonic()
        parent, peers, self.pending_links = self._resolve_links()
        fields = dict(
            node_id=self.config.node_id, address=self.config.address, port=self.config.port,
            capacity=self.config.capacity, peers=[peer.node_id for peer in peers],
            labels=self.config.labels, capabilities=self.config.capabilities,
        )
        try:
            node = node_register(parent=parent.node_id if parent else None, **fields)
        except InvalidRequest as error:  # the parent link would make a cycle: run without it
            logger.error("node %s: ignoring parent %r: %s", self.config.node_id, self.config.parent, error)
            node = node_register(parent=None, **fields)
        self.epoch = node.agent_epoch
        self.last_contact = contact
        request_pending_placement()  # a node joined: pending work may fit now
        for kind, name in self.pending_links:
            logger.warning("node %s: %s %r is not registered yet; will link it when it is",
                           self.config.node_id, kind, name)
        return node

    def _resolve_links(self) -> tuple[Node | None, list[Node], list[tuple[str, str]]]:
        pending = []
        parent = None
        if self.config.parent:
            parent = node_find(self.config.parent, excluding=self.config.node_id)
            if parent is None:
                pending.append(("parent", self.config.parent))
        peers = []
        for name in self.config.peers:
            found = node_find(name, excluding=self.config.node_id)
            if found is None:
                pending.append(("peer", name))
            else:
                peers.append(found)
        return parent, peers, pending

    def link_pending_once(self) -> bool:
        """Link the parent and peers that were not registered when this agent started."""
        if not self.pending_links:
            return False
        before = len(self.pending_links)
        parent, peers, pending = self._resolve_links()
        if len(pending) == before:
            return False
        try:
            node_link(node_id=self.config.node_id, parent=parent, peers=peers)
        except InvalidRequest as error:  # e.g. the parent link would make a cycle: say so once
            logger.error("node %s: cannot link %s: %s", self.config.node_id, self.config.parent, error)
            pending = [(kind, name) for kind, name in pending if kind != "parent"]
        self.pending_links = pending
        logger.info("node %s: linked late parent/peers; still waiting for %s", self.config.node_id, pending or "none")
        return True

    def heartbeat_once(self) -> bool:
        usage = sample_usage(storage_path=self.config.data_dir) | {"workloads_running": len(self.handles)}
        contact = time.monotonic()
        status = node_heartbeat(node_id=self.config.node_id, usage=usage, epoch=self.epoch)
        self.last_contact = contact
        self._report_fenced()
        if status is None:
            logger.warning("node %s: heartbeat refused (another agent took over); re-registering", self.config.node_id)
            self.register()
        elif status == NodeStatus.OFFLINE and self.accepting:
            # We were cut off long enough to be declared offline: our work was lost and may
            # run elsewhere now. Kill local copies before rejoining, never run duplicates.
            logger.warning("node %s: was declared offline; dropping stale work and rejoining", self.config.node_id)
            self.drop_stale(force=True)
            self.register()
        else:
            self.link_pending_once()
        return True

    def fence_once(self) -> bool:
        """Kill all local work once no heartbeat has reached the database for ``fence_after``
        seconds. Runs in a thread of its own and touches neither the database nor the lock:
        meanwhile the main loop and the starts may hang on a dead connection, and a stop (which
        signals under the lock) on an unanswering container engine."""
        silent = time.monotonic() - self.last_contact
        if silent < self.fence_after or not self.handles:
            return False
        for workload_id in list(self.handles):
            supervised = self.handles.pop(workload_id, None)
            if supervised is not None:
                logger.error("workload %s: node %s has not reached the database for %.1fs; killing the local "
                             "copy before it can be declared lost and run elsewhere (self-fencing)",
                             workload_id, self.config.node_id, silent)
                supervised.handle.kill()
                self.fenced[workload_id] = supervised
        return True

    def _report_fenced(self) -> None:
        """Back in touch: record fenced work as lost (if the control plane has not), so its
        restart policy applies."""
        for workload_id, supervised in list(self.fenced.items()):
            supervised.handle.poll()  # reaps the killed process
            supervised.handle.cleanup()
            workload_transition(
                workload_id=workload_id, to=WorkloadStatus.LOST, expect=ACTIVE, only_on=self.config.node_id,
                reason=f"node {self.config.node_id} could not reach the database for {self.fence_after:g}s; "
                       "its agent killed the local copy (self-fencing)",
            )
            self.fenced.pop(workload_id, None)
