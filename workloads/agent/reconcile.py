"""Reconciliation after a restart: make what runs here match what the database says runs here,
from the state file the last run left.

A room of ``Agent`` (agent.py). It owns the state file; from supervision it uses ``handles``,
``lock``, ``context`` and ``start``.
"""

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ..executors.base import AgentContext, ExecutorError, executor_for, executors
from ..models import ACTIVE, Workload, WorkloadStatus
from ..services import workload_note, workload_transition
from .config import AgentSettings
from .supervision import Supervised

logger = logging.getLogger(__name__)
S = WorkloadStatus


class StateFile:
    """What is supervised here, on disk (``{workload_id: runtime, log offsets, type}``): after a
    restart it names the survivors the database may no longer run here, and where each one's
    log shipping stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_lock = threading.Lock()

    def save(self, snapshot: Callable[[], dict]) -> None:
        # One writer at a time, each writing what it read last: two starts saving at once must
        # not leave the older snapshot (or a half-written file) as the one a restart reads.
        with self._write_lock:
            state = snapshot()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(self.path)

    def load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}


class Reconciliation:
    config: AgentSettings
    context: AgentContext
    handles: dict[str, Supervised]
    lock: threading.RLock

    def __init__(self) -> None:
        self.state_file = StateFile(self.config.data_dir / "agent" / f"{self.config.node_id}.json")

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
                self.handles[workload_id] = Supervised(handle, workload.type, recorded=handle.runtime())
            workload_note(workload_id=workload_id, reason=f"re-adopted by the restarted agent on {self.config.node_id}")
            logger.info("workload %s: re-adopted", workload_id)
        self._reap_orphans()
        self._save_state()

    def _reap_orphans(self) -> None:
        """What executors find on this node for work not supervised here now (e.g. containers)."""
        with self.lock:
            known = set(self.handles)
        for executor in executors():
            try:
                executor.reap_orphans(known=known, context=self.context)
            except Exception:
                logger.exception("node %s: %s could not reap orphans", self.config.node_id, type(executor).__name__)

    def _kill_unknown_survivors(self) -> dict:
        """Processes from the last run whose workloads are no longer running here.
        Returns the last run's saved state."""
        previous = self.state_file.load()
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
            stale = Workload(pk=workload_id, type=runtime.get("type", ""), runtime=runtime)
            try:
                handle = executor_for(stale.type).adopt(stale, self.context)
            except ExecutorError:
                continue
            if handle:
                logger.warning("workload %s: killing a survivor the database no longer runs here", workload_id)
                handle.kill()
                handle.cleanup()
        return previous

    def _save_state(self) -> None:
        self.state_file.save(self._state_snapshot)

    def _state_snapshot(self) -> dict:
        with self.lock:
            # list(): the fencing thread may pop entries without the lock (see fence_once).
            return {
                workload_id: {**s.handle.runtime_now(), "log_offsets": s.handle.offsets(),
                              "type": s.workload_type}
                for workload_id, s in list(self.handles.items())
            }
