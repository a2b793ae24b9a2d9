"""The node agent: membership, the supervisor of running work, log shipping, reconciliation.

The Celery worker thread calls ``start``/``stop`` (they return at once); the main loop
calls the ``*_once`` steps. Shared state (``self.handles``) is guarded by one lock.
"""

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, close_old_connections
from django.db.models import Max
from django.utils import timezone

from core.errors import InvalidRequest
from nodes.detect import sample_usage
from nodes.models import Node, NodeStatus
from nodes.resources import Resources
from nodes.services import (
    node_heartbeat,
    node_link,
    node_mark_offline,
    node_register,
    node_set_schedulable,
)

from ..dispatch import request_pending_placement
from ..executors.base import EXECUTORS, AgentContext, ExecutorError, Handle, executor_for
from ..executors.limits import detect_limiter
from ..models import ACTIVE, Workload, WorkloadLog, WorkloadStatus
from ..selectors import workload_for_transition
from ..services import (
    workload_logs_append,
    workload_note,
    workload_record_runtime,
    workload_requeue,
    workload_restart_if_due,
    workload_transition,
)

logger = logging.getLogger(__name__)
S = WorkloadStatus


@dataclass
class AgentSettings:
    node_id: str
    address: str
    port: int
    capacity: Resources
    parent: str | None
    peers: list[str]
    labels: dict
    work_dir: Path
    data_dir: Path
    heartbeat_seconds: float = 5.0
    stop_grace_seconds: float = 10.0
    # On SIGTERM: "stop" ends running work (stopped); "requeue" hands it back to be placed again.
    shutdown_policy: str = "stop"
    capabilities: dict = field(default_factory=dict)


@dataclass
class Supervised:
    handle: Handle
    # The next log chunk's number, read from the database when the first chunk is shipped (a
    # restarted workload continues its numbering); not on the start path, which it delayed.
    seq: int | None = None
    stop_deadline: float | None = None
    kill_reason: str | None = None
    # The runtime() the database was last given (for re-adopted work, what it was adopted from):
    # set-up finished after the start was recorded (a process's cgroups) is stored by the
    # supervisor, not by the start's thread beside the job's exit.
    recorded: dict = field(default_factory=dict)

    def runtime_news(self) -> dict | None:
        """``runtime_now()`` if the database has not been given it yet, else None."""
        runtime = self.handle.runtime_now()
        return runtime if runtime != self.recorded else None


class Agent:
    def __init__(self, config: AgentSettings, wake=lambda: None):
        self.config = config
        # Wakes the supervisor loop: work that was just started may already have exited.
        self.wake = wake
        self.lock = threading.RLock()
        self._state_write_lock = threading.Lock()
        self.handles: dict[str, Supervised] = {}
        self.starting: set[str] = set()  # being started by a worker thread, not yet supervised
        self.accepting = True
        self.epoch: int | None = None
        self.state_file = config.data_dir / "agent" / f"{config.node_id}.json"
        self.context = AgentContext(
            node_id=config.node_id,
            work_dir=config.work_dir,
            log_dir=config.data_dir / "logs" / config.node_id,
            limiter=detect_limiter(node_id=config.node_id),
            capabilities=config.capabilities,
            wake=lambda: self.wake(),  # the supervisor stores a process's limits once they are set up
        )
        self._last_status_check = 0.0
        # Self-fencing (fence_once): one heartbeat before the control plane may declare this
        # node offline and run its work elsewhere, a host that cannot reach the database kills
        # that work itself; it could not learn of the decision until it is back in touch.
        offline = settings.CNET_OFFLINE_AFTER_SECONDS
        self.fence_after = max(offline - config.heartbeat_seconds, offline / 2)
        self.last_contact = time.monotonic()  # when the last heartbeat the database took began
        self.fenced: dict[str, Supervised] = {}
        # Parent/peer names that named no registered node yet: linked on a later heartbeat.
        self.pending_links: list[tuple[str, str]] = []

    # How often the supervisor asks the database whether its work is still its own.
    STATUS_CHECK_SECONDS = 2.0

    # --- membership -----------------------------------------------------------------------
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
            parent = resolve_link(self.config.parent, me=self.config.node_id)
            if parent is None:
                pending.append(("parent", self.config.parent))
        peers = []
        for name in self.config.peers:
            found = resolve_link(name, me=self.config.node_id)
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
        seconds. Runs in a thread of its own and touches neither the database nor the lock: the
        main loop and the starts may hang on a dead connection meanwhile, some holding the lock."""
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
                workload_id=workload_id, to=S.LOST, expect=ACTIVE, only_on=self.config.node_id,
                reason=f"node {self.config.node_id} could not reach the database for {self.fence_after:g}s; "
                       "its agent killed the local copy (self-fencing)",
            )
            self.fenced.pop(workload_id, None)

    # --- called from the Celery worker ----------------------------------------------------
    def start(self, workload_id: str) -> None:
        """Start a scheduled workload here. Idempotent: the status transition decides.

        The lock guards only the bookkeeping: a slow start (an image pull) must not stall the
        supervisor's log shipping, exits and stop deadlines for everything else."""
        with self.lock:
            if not self.accepting or workload_id in self.handles or workload_id in self.starting:
                return
            self.starting.add(workload_id)
        try:
            started = self._start(workload_id)
            if started is not None:
                handle, recorded = started
                with self.lock:
                    self.handles[workload_id] = Supervised(handle, recorded=recorded)
                self.wake()
                self._save_state()
        finally:
            with self.lock:
                self.starting.discard(workload_id)

    def _start(self, workload_id: str) -> tuple[Handle, dict] | None:
        """Start the workload and record it running; the handle and the runtime recorded."""
        workload = Workload.objects.select_related("node").filter(
            pk=workload_id, status=S.SCHEDULED, node__node_id=self.config.node_id
        ).first()
        if workload is None:
            logger.info("workload %s: start ignored (not scheduled on %s)", workload_id, self.config.node_id)
            return None
        try:
            handle = executor_for(workload.type).start(workload, self.context)
        except Exception as error:  # whatever went wrong, the workload must end saying so
            if not isinstance(error, ExecutorError):
                logger.exception("workload %s: start failed", workload_id)
            workload_transition(workload_id=workload_id, to=S.FAILED, expect=[S.SCHEDULED],
                                only_on=self.config.node_id, reason=str(error) or type(error).__name__)
            return None
        recorded = handle.early_runtime()
        try:
            running = workload_transition(
                workload=workload, to=S.RUNNING, expect=[S.SCHEDULED], only_on=self.config.node_id,
                reason=f"started on {self.config.node_id}", runtime=recorded, agent_epoch=self.epoch,
            )
        except Exception:
            running = False  # not recorded as running: a re-dispatch must not find a copy here
            logger.exception("workload %s: could not record its start; killing it", workload_id)
        if not running:
            # Stopped or re-placed while we were starting it: it must not run.
            handle.kill()
            handle.cleanup()
            return None
        return handle, recorded

    def stop(self, workload_id: str) -> None:
        """Begin a graceful stop: SIGTERM now, SIGKILL after the grace period (in ``supervise_once``)."""
        with self.lock:
            supervised = self.handles.get(workload_id)
            if supervised is None or supervised.stop_deadline is not None:
                return
            supervised.stop_deadline = time.monotonic() + self.config.stop_grace_seconds
            supervised.handle.terminate()

    # --- the supervisor -------------------------------------------------------------------
    def supervise_once(self) -> bool:
        """Ship new output, enforce limits and stop deadlines, report exits. Returns "did work"."""
        busy = False
        with self.lock:
            items = list(self.handles.items())
        for workload_id, supervised in items:
            # One workload's failure (a deleted row, a vanished cgroup) must not stall the others.
            try:
                busy |= self._supervise_one(workload_id, supervised)
            except Exception:
                logger.exception("workload %s: supervising failed; will retry", workload_id)
        if busy:
            self._save_state()
        if time.monotonic() - self._last_status_check > self.STATUS_CHECK_SECONDS:
            self._last_status_check = time.monotonic()
            busy |= self.drop_stale()
        return busy

    def _supervise_one(self, workload_id: str, supervised: Supervised) -> bool:
        exit_ = supervised.handle.poll()
        try:
            busy = self._ship_logs(workload_id, supervised, final=exit_ is not None)
        except IntegrityError:
            # The row is gone (deleted while running): nothing to report to, so just end it.
            if Workload.objects.filter(pk=workload_id).exists():
                raise
            self._drop(workload_id, "its workload was deleted")
            return True
        if exit_ is None:
            self._enforce(workload_id, supervised)  # first: a failing write must not skip a deadline
            return self._record_runtime(workload_id, supervised) or busy
        self._finish(workload_id, supervised, exit_)
        return True

    def _ship_logs(self, workload_id: str, supervised: Supervised, *, final: bool) -> bool:
        chunks = []
        for stream, text in supervised.handle.read_logs(final=final):
            if supervised.seq is None:
                supervised.seq = self._next_seq(workload_id)
            chunks.append((supervised.seq, stream, text))
            supervised.seq += 1
        if chunks:
            workload_logs_append(workload_id=workload_id, chunks=chunks)
        return bool(chunks)

    def _drop(self, workload_id: str, why: str) -> Supervised | None:
        """Kill the local copy of a workload and forget it."""
        with self.lock:
            supervised = self.handles.pop(workload_id, None)
        if supervised:
            logger.warning("workload %s: %s; killing the local copy", workload_id, why)
            supervised.handle.kill()
            supervised.handle.cleanup()
        return supervised

    def _record_runtime(self, workload_id: str, supervised: Supervised) -> bool:
        """Store set-up that finished after the start was recorded; whether there was any. The
        supervisor never waits for it: a pass after it has finished stores it."""
        runtime = supervised.runtime_news()
        if runtime is None:
            return False
        workload_record_runtime(workload_id=workload_id, runtime=runtime, only_on=self.config.node_id)
        supervised.recorded = runtime
        return True

    def _enforce(self, workload_id: str, supervised: Supervised) -> None:
        now = time.monotonic()
        if supervised.stop_deadline is not None and now > supervised.stop_deadline:
            supervised.handle.kill()
            return
        limit = supervised.handle.runtime_now().get("memory_limit_bytes")  # the watchdog's, once set up
        if limit and supervised.kill_reason is None:
            used = supervised.handle.memory_bytes()
            if used is not None and used > limit:
                supervised.kill_reason = "memory limit exceeded"
                logger.warning("workload %s: %s bytes resident over limit %s; killing", workload_id, used, limit)
                supervised.handle.kill()

    def _finish(self, workload_id: str, supervised: Supervised, exit_) -> None:
        workload = workload_for_transition(workload_id=workload_id)
        if supervised.kill_reason or exit_.oom:
            to, reason = S.FAILED, supervised.kill_reason or exit_.reason
        elif workload and workload.stop_requested_at:
            to, reason = S.STOPPED, f"stopped ({exit_.reason})"
        elif exit_.code == 0:
            to, reason = S.SUCCEEDED, exit_.reason
        else:
            to, reason = S.FAILED, exit_.reason
        runtime = supervised.runtime_news()  # a quick exit does not wait for its limits
        moved = workload is not None and workload_transition(
            workload=workload, to=to, reason=reason, expect=[S.RUNNING], only_on=self.config.node_id,
            exit_code=exit_.code, restart=False, **({"runtime": runtime} if runtime is not None else {}),
        )
        supervised.handle.cleanup()
        with self.lock:
            self.handles.pop(workload_id, None)
        if moved:
            # Only now: a restart placed here again is started at once, not ignored as running.
            workload_restart_if_due(workload=workload, ended=to)

    def drop_stale(self, *, force: bool = False) -> bool:
        """Kill local work the database no longer says runs here (lost, stopped, deleted).

        ``force``: this node was declared offline, so all of its work counts as lost (it may
        already run elsewhere); kill every local copy and record the loss if the control
        loop has not yet (it may not: this node is about to rejoin)."""
        with self.lock:
            ids = list(self.handles)
        if not ids:
            return False
        rows = Workload.objects.filter(pk__in=ids, status=S.RUNNING, node__node_id=self.config.node_id)
        still_ours = set()
        for pk, stop_requested_at in rows.values_list("pk", "stop_requested_at"):
            still_ours.add(str(pk))
            if stop_requested_at:
                self.stop(str(pk))  # its stop message may have been lost; stop() is idempotent
        if force:
            still_ours = set()
        dropped = False
        for workload_id in ids:
            if workload_id in still_ours:
                continue
            why = "this node was declared offline" if force else "no longer ours in the database"
            if self._drop(workload_id, why):
                dropped = True
                if force:
                    workload_transition(
                        workload_id=workload_id, to=S.LOST, expect=ACTIVE, only_on=self.config.node_id,
                        reason=f"node {self.config.node_id} was declared offline; its local copy was killed",
                    )
        self._save_state()
        return dropped

    # --- after a restart ------------------------------------------------------------------
    def reconcile(self) -> None:
        """Make what runs here match what the database says runs here."""
        previous = self._kill_unknown_survivors()
        for workload in Workload.objects.filter(node__node_id=self.config.node_id, status__in=ACTIVE):
            workload_id = str(workload.pk)
            if workload.status == S.SCHEDULED:
                self.start(workload_id)
                continue
            # Resume log shipping where the last run stopped, not from the start (no duplicates).
            offsets = (previous.get(workload_id) or {}).get("log_offsets")
            if offsets:
                workload.runtime = {**(workload.runtime or {}), "log_offsets": offsets}
            try:
                handle = executor_for(workload.type).adopt(workload, self.context)
            except ExecutorError:
                handle = None
            if handle is None:
                workload_transition(workload_id=workload_id, to=S.LOST, expect=[S.RUNNING],
                                    only_on=self.config.node_id,
                                    reason="its process ended while the agent was down; exit code unknown")
                continue
            with self.lock:
                self.handles[workload_id] = Supervised(handle, recorded=handle.runtime())
            workload_note(workload_id=workload_id, reason=f"re-adopted by the restarted agent on {self.config.node_id}")
            logger.info("workload %s: re-adopted", workload_id)
        self._reap_orphans()
        self._save_state()

    def _reap_orphans(self) -> None:
        """What executors find on this node for work not supervised here now (e.g. containers)."""
        with self.lock:
            known = set(self.handles)
        for executor in EXECUTORS.values():
            try:
                executor.reap_orphans(known=known, context=self.context)
            except Exception:
                logger.exception("node %s: %s executor could not reap orphans", self.config.node_id, executor.type)

    def _kill_unknown_survivors(self) -> dict:
        """Processes from the last run whose workloads are no longer running here.
        Returns the last run's saved state."""
        previous = self._load_state()
        if not previous:
            return {}
        running_here = set(
            str(pk) for pk in Workload.objects.filter(
                pk__in=list(previous), status=S.RUNNING, node__node_id=self.config.node_id
            ).values_list("pk", flat=True)
        )
        for workload_id, runtime in previous.items():
            if workload_id in running_here:
                continue
            stale = Workload(pk=workload_id, type=runtime.get("type", "process"), runtime=runtime)
            try:
                handle = executor_for(stale.type).adopt(stale, self.context)
            except ExecutorError:
                continue
            if handle:
                logger.warning("workload %s: killing a survivor the database no longer runs here", workload_id)
                handle.kill()
                handle.cleanup()
        return previous

    def _next_seq(self, workload_id: str) -> int:
        last = WorkloadLog.objects.filter(workload_id=workload_id).aggregate(m=Max("seq"))["m"]
        return 0 if last is None else last + 1

    def _save_state(self) -> None:
        # One writer at a time, each writing what it read last: two starts saving at once must
        # not leave the older snapshot (or a half-written file) as the one a restart reads.
        with self._state_write_lock:
            with self.lock:
                # list(): the fencing thread may pop entries without the lock (see fence_once).
                state = {
                    workload_id: {**s.handle.runtime_now(), "log_offsets": s.handle.offsets(),
                                  "type": s.handle.workload_type}
                    for workload_id, s in list(self.handles.items())
                }
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(self.state_file)

    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    # --- shutdown -------------------------------------------------------------------------
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
                node__node_id=self.config.node_id, status=S.SCHEDULED
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
            Workload.objects.filter(pk=workload_id, stop_requested_at__isnull=True).update(
                stop_requested_at=timezone.now()
            )
        self.stop(workload_id)

    def _guarded(self, step, **kwargs) -> None:
        try:
            step(**kwargs)
        except Exception:
            logger.exception("node %s: shutdown step %s%s failed; going on",
                             self.config.node_id, getattr(step, "__name__", step), kwargs)


def resolve_link(name: str, *, me: str | None = None) -> Node | None:
    """The registered node a config names (node_id or address:port), or None if not yet.

    Never this node itself (``me``): a stale row of ours may still advertise the address a
    config now gives another node. Among several at one address, a live one wins. A node
    that advertises the wildcard 0.0.0.0 (the seed's "listen everywhere") answers to
    loopback names on its port, so configs written for one machine link up."""
    others = Node.objects.exclude(node_id=me) if me else Node.objects.all()
    found = others.filter(node_id=name).first()
    host, _, port = name.rpartition(":")
    if found is None and port.isdigit():
        hosts = [host]
        if host in {"127.0.0.1", "localhost", "::1", "[::1]"}:
            hosts.append("0.0.0.0")
        candidates = others.filter(address__in=hosts, port=int(port))
        found = (candidates.exclude(status=NodeStatus.OFFLINE).order_by("pk").first()
                 or candidates.order_by("pk").first())
    return found
