"""Supervision: start work placed here, then each pass ship its output, enforce its limits and stop
deadlines, and report how it ended.

A room of ``Agent`` (agent.py). It owns what is supervised (``handles``, ``starting``,
``accepting``, all under ``lock``) and the executors' ``context``; it saves the state file
(``_save_state``, reconcile.py) whenever what is supervised changed.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from django.db import IntegrityError
from django.db.models import Max

from ..executors.base import AgentContext, ExecutorError, Handle, executor_for
from ..executors.limits import detect_limiter
from ..models import ACTIVE, Workload, WorkloadLog, WorkloadStatus
from ..selectors import workload_for_transition
from ..services import (
    workload_logs_append,
    workload_record_runtime,
    workload_restart_if_due,
    workload_transition,
)
from .config import AgentSettings

logger = logging.getLogger(__name__)
S = WorkloadStatus


@dataclass
class Supervised:
    handle: Handle
    workload_type: str  # its kind: which executor re-adopts or kills it after an agent restart
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


class Supervision:
    # How often the supervisor asks the database whether its work is still its own.
    STATUS_CHECK_SECONDS = 2.0

    config: AgentSettings
    epoch: int | None  # membership's: the agent that starts work is recorded with it

    def __init__(self, *, wake) -> None:
        # Wakes the supervisor loop: work that was just started may already have exited.
        self.wake = wake
        # Held for bookkeeping only, never across a database call or a start (see start()).
        self.lock = threading.RLock()
        self.handles: dict[str, Supervised] = {}
        self.starting: set[str] = set()  # being started by a worker thread, not yet supervised
        self.accepting = True
        self.context = AgentContext(
            node_id=self.config.node_id,
            work_dir=self.config.work_dir,
            log_dir=self.config.log_dir / self.config.node_id,
            limiter=detect_limiter(node_id=self.config.node_id),
            capabilities=self.config.capabilities,
            wake=lambda: self.wake(),  # the supervisor stores a process's limits once they are set up
        )
        self._last_status_check = 0.0

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
                with self.lock:
                    self.handles[workload_id] = started
                self.wake()
                self._save_state()
        finally:
            with self.lock:
                self.starting.discard(workload_id)

    def _start(self, workload_id: str) -> Supervised | None:
        """Start the workload and record it running; what to supervise, with the runtime recorded."""
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
        return Supervised(handle, workload.type, recorded=recorded)

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

    def _next_seq(self, workload_id: str) -> int:
        last = WorkloadLog.objects.filter(workload_id=workload_id).aggregate(m=Max("seq"))["m"]
        return 0 if last is None else last + 1

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
        moved = workload is not None and workload_transition(
            workload=workload, to=to, reason=reason, expect=[S.RUNNING], only_on=self.config.node_id,
            exit_code=exit_.code, runtime=supervised.runtime_news(),  # a quick exit does not wait for its limits
            restart=False,
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
