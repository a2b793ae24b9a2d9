"""Reconciliation after a restart: make what runs here match what the control plane says runs
here (``GET /api/node/work``), from the state file the last run left.

A room of ``Agent`` (agent.py). It owns the state file; from supervision it uses ``handles``,
``lock``, ``context``, the report spool and ``start_work``.
"""

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ..executors.base import AgentContext, ExecutorError, executor_for, executors
from ..models import Workload, WorkloadStatus
from .client import ControlPlane
from .config import AgentSettings
from .supervision import Supervised, time_limit, workload_from

logger = logging.getLogger(__name__)
S = WorkloadStatus


class StateFile:
    """What is supervised here, on disk (``{workload_id: runtime, log offsets, type, the run's
    scheduled_at and epoch, the next log number}``): after a restart it names the survivors the
    control plane may no longer run here, the run each one is, and where its log shipping stopped.

    A journal of JSON lines, each the entries that changed since the line before (``null``: gone),
    read back by merging them in order: a save writes what changed, not every workload supervised
    (rewriting them all was a sixth of a busy agent's Python time, measured with 2,000 quick jobs).
    Rewritten whole once it holds more lines than is worth replaying. A line torn by a crash is
    the last one, and is skipped: the state is then the one saved before it."""

    COMPACT_AFTER = 200  # lines appended since the journal was last written whole

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_lock = threading.Lock()
        self._saved: dict | None = None  # what the file says now (None: not read or written yet)
        self._lines = 0

    def save(self, snapshot: Callable[[], dict]) -> None:
        # One writer at a time, each writing what it read last: two starts saving at once must
        # not leave the older snapshot (or a half-written line) as the one a restart reads.
        with self._write_lock:
            state = snapshot()
            if self._saved is None or self._lines >= self.COMPACT_AFTER:
                self._rewrite(state)
                return
            changed = {key: value for key, value in state.items() if self._saved.get(key) != value}
            changed.update({key: None for key in self._saved.keys() - state.keys()})
            if changed:
                with self.path.open("a") as file:
                    file.write(json.dumps(changed) + "\n")
                self._saved, self._lines = state, self._lines + 1

    def _rewrite(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")  # not the spool's tmp, beside it
        tmp.write_text(json.dumps(state) + "\n")
        tmp.replace(self.path)
        self._saved, self._lines = state, 0

    def load(self) -> dict:
        state: dict = {}
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return state
        for line in lines:
            try:
                changed = json.loads(line)
            except ValueError:
                continue  # torn by a crash mid-write
            for key, value in changed.items():
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
        return state


class Reconciliation:
    config: AgentSettings
    client: ControlPlane
    context: AgentContext
    handles: dict[str, Supervised]
    lock: threading.RLock

    def __init__(self) -> None:
        self.state_file = StateFile(self.config.data_dir / "agent" / f"{self.config.node_id}.json")

    def reconcile(self) -> None:
        """Make what runs here match what the control plane says runs here, then start the work
        placed here."""
        previous = self.state_file.load()
        answer = self.client.work()
        running = {str(details["id"]): details for details in answer["running"]}
        self._kill_unknown_survivors(previous, running)
        for workload_id, details in running.items():
            saved = previous.get(workload_id) or {}
            workload = workload_from(details)
            # Resume log shipping where the last run stopped, not from the start (no duplicates).
            offsets = saved.get("log_offsets")
            if offsets:
                workload.runtime = {**(workload.runtime or {}), "log_offsets": offsets}
            run = Supervised(handle=None, workload_type=workload.type, scheduled_at=details["scheduled_at"],
                             restart_policy=workload.restart_policy, on_disconnect=details.get("on_disconnect"),
                             seq=max(saved.get("seq") or 0, details.get("log_next_seq") or 0),
                             stop_requested=bool(details.get("stop_requested_at")), **time_limit(details))
            try:
                handle = executor_for(workload.type).adopt(
                    workload, self.context.for_workload(workload_id, owner=details.get("owner")))
            except ExecutorError:
                handle = None
            if handle is None:
                self._report(workload_id, run, S.LOST,
                             reason="its process ended while the agent was down; exit code unknown")
                continue
            run.handle, run.recorded = handle, handle.runtime()
            with self.lock:
                self.handles[workload_id] = run
            self._report(workload_id, run, S.RUNNING, runtime=run.recorded,
                         reason=f"re-adopted by the restarted agent on {self.config.node_id}")
            logger.info("workload %s: re-adopted by the restarted agent on %s", workload_id, self.config.node_id)
        self._reap_orphans()
        self._save_state()
        self.flush(now=True)
        self.start_work(answer["work"])

    def _reap_orphans(self) -> None:
        """What executors find on this node for work not supervised here now (e.g. containers)."""
        with self.lock:
            known = set(self.handles)
        for executor in executors():
            try:
                executor.reap_orphans(known=known, context=self.context)
            except Exception:
                logger.exception("node %s: %s could not reap orphans", self.config.node_id, type(executor).__name__)

    def _kill_unknown_survivors(self, previous: dict, running: dict) -> None:
        """Processes from the last run that the control plane no longer runs here (or whose run
        it has since replaced)."""
        for workload_id, saved in previous.items():
            details = running.get(workload_id)
            if details is not None and saved.get("scheduled_at") in (None, details["scheduled_at"]):
                continue
            stale = Workload(pk=workload_id, type=saved.get("type", ""), runtime=saved)
            try:
                handle = executor_for(stale.type).adopt(stale, self.context.for_workload(workload_id))
            except ExecutorError:
                continue
            if handle:
                logger.warning("workload %s: killing a survivor the control plane no longer runs here", workload_id)
                handle.kill()
                handle.cleanup()

    def _save_state(self) -> None:
        self.state_file.save(self._state_snapshot)

    def _state_snapshot(self) -> dict:
        with self.lock:
            # list(): the fencing thread may pop entries without the lock (see fence_once).
            return {
                workload_id: {**s.handle.runtime_now(), "log_offsets": s.handle.offsets(), "type": s.workload_type,
                              "scheduled_at": s.scheduled_at, "epoch": self.epoch, "seq": s.seq,
                              "restart_policy": s.restart_policy}
                for workload_id, s in list(self.handles.items())
            }
