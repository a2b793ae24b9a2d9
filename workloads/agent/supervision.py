"""Supervision: start the work the control plane placed here, then each pass spool its output,
enforce its limits and stop deadlines, report how it ended, and deliver the batch.

A room of ``Agent`` (agent.py). It owns what is supervised (``handles``, ``starting``,
``accepting``, all under ``lock``), the executors' ``context`` and the spool of reports and log
chunks not delivered yet; it saves the state file (``_save_state``, reconcile.py) whenever what
is supervised changed. What to run comes only from the control plane's answers (``start_work``):
a doorbell only makes the agent ask (``start``).
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.utils.dateparse import parse_datetime

from ..executors.base import AgentContext, ExecutorError, Handle, executor_for
from ..executors.identity import isolation_at_start
from ..executors.limits import detect_limiter
from ..models import Workload, WorkloadStatus
from .client import ControlPlane, ControlPlaneError, Refused, Spool
from .config import AgentSettings

logger = logging.getLogger(__name__)
S = WorkloadStatus
MAX_FLUSH_BACKOFF = 5.0
# Threads that spawn a burst of starts (each mostly waits on fork/exec and cgroup set-up).
START_THREADS = 4
# Starts per burst at most: the rest come with the next look.
START_BURST = 100
# Threads that clean up after exits (a workspace's unmount and removal, cgroups, leases).
FINISH_THREADS = 4


@dataclass
class Supervised:
    handle: Handle
    workload_type: str  # its kind: which executor re-adopts or kills it after an agent restart
    scheduled_at: str  # the run, as the control plane named it: every report about it says so
    restart_policy: str = "never"
    on_disconnect: str | None = None  # the control plane's word; None: as restart_policy implies
    seq: int = 0  # the next log chunk's number
    stop_requested: bool = False
    stop_deadline: float | None = None
    kill_reason: str | None = None
    # Its max_runtime_seconds as a monotonic deadline, from the time the control plane says is
    # left (so it holds across an agent restart, by the control plane's clock).
    max_runtime_seconds: int | None = None
    time_limit_at: float | None = None
    # Its exit was seen and its clean-up runs beside the loop (``_finish``): not supervised again.
    finishing: bool = False
    # The runtime() the control plane was last given (for re-adopted work, what it was adopted
    # from): set-up finished after the start (a process's cgroups) is reported by the supervisor.
    recorded: dict = field(default_factory=dict)

    def runtime_news(self) -> dict | None:
        """``runtime_now()`` if the control plane has not been given it yet, else None."""
        runtime = self.handle.runtime_now()
        return runtime if runtime != self.recorded else None


def workload_from(details: dict) -> Workload:
    """An unsaved workload built from the control plane's start details: what executors read."""
    requirements = details.get("requirements") or {}
    return Workload(
        id=details["id"], name=details.get("name", ""), type=details["type"], status=details.get("status", ""),
        config=details.get("config") or {}, runtime=details.get("runtime") or {},
        cpu_millicores=requirements.get("cpu_millicores", 0), gpu_count=requirements.get("gpu_count", 0),
        memory_bytes=requirements.get("memory_bytes", 0), storage_bytes=requirements.get("storage_bytes", 0),
        restart_policy=details.get("restart_policy", "never"), restart_count=details.get("restart_count", 0),
        priority=details.get("priority", 0), agent_epoch=details.get("agent_epoch"),
        scheduled_at=parse_datetime(details["scheduled_at"]) if details.get("scheduled_at") else None,
        started_at=parse_datetime(details["started_at"]) if details.get("started_at") else None,
        stop_requested_at=parse_datetime(details["stop_requested_at"]) if details.get("stop_requested_at") else None,
    )


def time_limit(details: dict) -> dict:
    """The ``Supervised`` fields of a workload's time limit, from its start details."""
    left = details.get("time_left_seconds")
    return {"max_runtime_seconds": details.get("max_runtime_seconds"),
            "time_limit_at": None if left is None else time.monotonic() + float(left)}


class Supervision:
    config: AgentSettings
    client: ControlPlane
    epoch: int | None  # membership's: every report carries it

    def __init__(self, *, wake) -> None:
        # Wakes the supervisor loop: work that was just started may already have exited.
        self.wake = wake
        # Held for bookkeeping only, never across a request or a start (see start_work()).
        self.lock = threading.RLock()
        self.handles: dict[str, Supervised] = {}
        self.starting: set[str] = set()  # being started by a worker thread, not yet supervised
        self.accepting = True
        self.spool = Spool(self.config.data_dir / "agent" / f"{self.config.node_id}.spool")
        self._flush_after = 0.0  # after a failed delivery: not before then (bounded backoff)
        self._flush_backoff = 0.25
        self._look_due = False
        # runagent's: the thread that runs the bursts the main loop wants (``start_beside_loop``);
        # without it (an agent driven step by step) they run in the caller's thread.
        self._starter: threading.Thread | None = None
        self._look_wanted = threading.Event()
        self._state_changed = False  # what is supervised changed beside the loop: save it
        self._finisher = ThreadPoolExecutor(FINISH_THREADS, thread_name_prefix="finish")
        self.context = AgentContext(
            node_id=self.config.node_id,
            work_dir=self.config.work_dir,
            log_dir=self.config.log_dir / self.config.node_id,
            limiter=detect_limiter(node_id=self.config.node_id),
            capabilities=self.config.capabilities,
            wake=lambda: self.wake(),  # the supervisor reports a process's limits once they are set up
            # Issue 15: leases of uids and GPUs, ports bound to the node's address, and whether
            # workloads run as their own uids (logged once here when they cannot).
            data_dir=self.config.data_dir,
            address=self.config.address,
            isolation=isolation_at_start(node_id=self.config.node_id, data_dir=self.config.data_dir,
                                         work_dir=self.config.work_dir),
        )

    # --- what to run: from the control plane only -------------------------------------------
    def start_beside_loop(self) -> None:
        """From now on, the starts that the main loop's steps want run in a thread of their own.
        On a saturated machine a burst of isolated starts takes seconds, and the loop must go on
        beating meanwhile: a node whose beats wait on its starts is declared offline."""
        self._starter = threading.Thread(target=self._starter_loop, name="starter", daemon=True)
        self._starter.start()

    def _starter_loop(self) -> None:
        while True:
            self._look_wanted.wait()
            self._look_wanted.clear()  # a look wanted during this burst makes the next one
            try:
                self.start()
            except Exception:
                logger.exception("node %s: starting work failed; the next look retries", self.config.node_id)

    def _want_starts(self, work: list[dict] | None = None, *, more: bool = False) -> None:
        """Start what is placed here: ``work`` (a heartbeat's list), else what the control plane
        lists when asked. Beside the loop, the starter asks afresh: by the time it runs, a listed
        workload may have started and ended here already."""
        if self._starter is not None:
            self._look_wanted.set()
        elif work is None:
            self.start()
        else:
            self.start_work(work, more=more)

    def start(self, workload_id: str | None = None) -> None:
        """The doorbell rang (a start message names a workload, but only says "look"): ask the
        control plane what is placed here and start that. A forged or replayed message starts
        nothing the control plane does not list."""
        try:
            # A burst at a time: an array's thousands placed here are not all read on every look.
            answer = self.client.work(status=S.SCHEDULED, limit=START_BURST)
        except (ControlPlaneError, Refused) as error:
            logger.warning("node %s: could not fetch work (a heartbeat will ask again): %s", self.config.node_id, error)
            return
        work = answer["work"]
        if workload_id is not None and not answer["more"] and workload_id not in {str(d["id"]) for d in work}:
            logger.info("workload %s: start ignored (not scheduled on %s)", workload_id, self.config.node_id)
        self.start_work(work, more=answer["more"])

    def start_work(self, work: list[dict], *, more: bool = False) -> None:
        """Start every listed workload not supervised or starting yet, together: the processes are
        spawned by a few threads (a cgroup's set-up waits on the kernel, not on the CPU), and their
        starts (or failures) go to the control plane in one batch of reports, not one request
        each, so a burst of starts does not queue behind one round trip per start. Idempotent.
        The lock guards only the bookkeeping: a slow start (an image pull) must not stall the
        supervisor's log shipping, exits and stop deadlines for everything else."""
        with self.lock:
            if not self.accepting:
                return
            claimed = [details for details in work
                       if str(details["id"]) not in self.handles and str(details["id"]) not in self.starting]
            if more:  # the control plane listed a batch: the next pass asks for the next one
                self._look_due = True
                self.wake()
            if len(claimed) > START_BURST:  # the rest go in bursts of their own, one per look
                claimed = claimed[:START_BURST]
                self._look_due = True
                self.wake()
            self.starting.update(str(details["id"]) for details in claimed)
        if not claimed:
            return
        try:
            if len(claimed) == 1:
                spawned = [self._spawn(claimed[0])]
            else:
                with ThreadPoolExecutor(min(START_THREADS, len(claimed)), thread_name_prefix="start") as pool:
                    spawned = list(pool.map(self._spawn, claimed))
            results = self.flush(now=True)
            answers = {str(result["workload_id"]): result for result in results or []}  # the last one counts
            started = False
            for details, run in zip(claimed, spawned, strict=True):
                if run is not None and self._accepted(str(details["id"]), run, answers):
                    with self.lock:
                        self.handles[str(details["id"])] = run
                    started = True
            if started:
                self.wake()
                self._save_state()
        finally:
            with self.lock:
                self.starting.difference_update(str(details["id"]) for details in claimed)

    def _spawn(self, details: dict) -> Supervised | None:
        """Start one workload and spool its report (running, or failed to start); None if it failed."""
        workload = workload_from(details)
        workload_id = str(workload.pk)
        run = Supervised(handle=None, workload_type=workload.type, scheduled_at=details["scheduled_at"],
                         restart_policy=workload.restart_policy, on_disconnect=details.get("on_disconnect"),
                         seq=details.get("log_next_seq") or 0,
                         stop_requested=bool(details.get("stop_requested_at")), **time_limit(details))
        scope = self.context.for_workload(workload_id, owner=details.get("owner"))  # its uid, workspace, GPUs
        try:
            handle = executor_for(workload.type).start(workload, scope)
        except Exception as error:  # whatever went wrong, the workload must end saying so
            scope.release()
            if not isinstance(error, ExecutorError):
                logger.exception("workload %s: start failed", workload_id)
            self._report(workload_id, run, S.FAILED, reason=str(error) or type(error).__name__)
            return None
        run.handle = handle
        run.recorded = handle.early_runtime()
        self._report(workload_id, run, S.RUNNING, reason=f"started on {self.config.node_id}", runtime=run.recorded)
        return run

    def _accepted(self, workload_id: str, run: Supervised, answers: dict) -> bool:
        """Whether a started workload is to run on: not if the control plane refused its start."""
        answer = answers.get(workload_id)
        if answer is not None and not answer["accepted"] and answer["status"] != S.RUNNING:
            # Stopped or re-placed while we were starting it: it must not run.
            logger.info("workload %s: its start was not accepted (%s); killing it", workload_id, answer["status"])
            run.handle.kill()
            run.handle.cleanup()
            return False
        # Not delivered (the control plane is out of reach): it runs, its report is spooled, and
        # a heartbeat's ``kill`` ends it if the control plane no longer wants it here.
        return True

    def stop(self, workload_id: str) -> None:
        """Begin a graceful stop: SIGTERM now, SIGKILL after the grace period (in ``supervise_once``)."""
        with self.lock:
            supervised = self.handles.get(workload_id)
            if supervised is None or supervised.stop_deadline is not None:
                return
            supervised.stop_requested = True
            supervised.stop_deadline = time.monotonic() + self.config.stop_grace_seconds
            supervised.handle.terminate()

    # --- reports and their delivery -------------------------------------------------------------
    def _report(self, workload_id: str, run: Supervised, status: str, *, reason: str = "",
                exit_code: int | None = None, runtime: dict | None = None) -> None:
        report = {"workload_id": workload_id, "status": status, "reason": reason[:4000], "exit_code": exit_code,
                  "epoch": self.epoch, "scheduled_at": run.scheduled_at}
        if runtime is not None:
            report["runtime"] = runtime
        self.spool.add(reports=[report])

    def flush(self, *, now: bool = False) -> list[dict] | None:
        """Deliver what is spooled, in order; the reports' results, None if not delivered."""
        if not len(self.spool):
            return []
        if not now and time.monotonic() < self._flush_after:
            return None
        results = self.spool.flush(self.client)
        if results is None:
            self._flush_after = time.monotonic() + self._flush_backoff
            self._flush_backoff = min(self._flush_backoff * 2, MAX_FLUSH_BACKOFF)
            return None
        self._flush_after, self._flush_backoff = 0.0, 0.25
        if any(result["accepted"] and result["status"] == S.SCHEDULED for result in results):
            self._look_due = True  # an exit's restart was placed (here, maybe): start it without waiting for the bell
        return results

    # --- the supervisor -------------------------------------------------------------------
    def supervise_once(self) -> bool:
        """Spool new output, enforce limits and stop deadlines, report exits, deliver the batch.
        Returns "did work"."""
        busy = False
        with self.lock:
            items = list(self.handles.items())
        for workload_id, supervised in items:
            if supervised.finishing:
                continue
            # One workload's failure (a vanished cgroup) must not stall the others.
            try:
                busy |= self._supervise_one(workload_id, supervised)
            except Exception:
                logger.exception("workload %s: supervising failed; will retry", workload_id)
        if busy or self._state_changed:
            self._state_changed = False
            self._save_state()
        self.flush()
        if self._look_due and self.accepting:
            self._look_due = False
            self._want_starts()
        return busy

    def _supervise_one(self, workload_id: str, supervised: Supervised) -> bool:
        exit_ = supervised.handle.poll()
        busy = self._spool_logs(workload_id, supervised, final=exit_ is not None)
        if exit_ is None:
            self._enforce(workload_id, supervised)
            return self._record_runtime(workload_id, supervised) or busy
        self._finish(workload_id, supervised, exit_)
        return True

    def _spool_logs(self, workload_id: str, supervised: Supervised, *, final: bool) -> bool:
        chunks = []
        for stream, text in supervised.handle.read_logs(final=final):
            chunks.append({"workload_id": workload_id, "seq": supervised.seq, "stream": stream, "text": text})
            supervised.seq += 1
        self.spool.add(logs=chunks)
        return bool(chunks)

    def _drop(self, workload_id: str, why: str) -> Supervised | None:
        """Kill the local copy of a workload and forget it."""
        with self.lock:
            supervised = self.handles.pop(workload_id, None)
        if supervised:
            logger.warning("workload %s: %s; killing the local copy", workload_id, why)
            supervised.handle.kill()
            supervised.handle.cleanup()
            self._save_state()
        return supervised

    def _record_runtime(self, workload_id: str, supervised: Supervised) -> bool:
        """Report set-up that finished after the start was recorded; whether there was any."""
        runtime = supervised.runtime_news()
        if runtime is None:
            return False
        self._report(workload_id, supervised, S.RUNNING, runtime=runtime)
        supervised.recorded = runtime
        return True

    def _enforce(self, workload_id: str, supervised: Supervised) -> None:
        now = time.monotonic()
        if supervised.stop_deadline is not None and now > supervised.stop_deadline:
            supervised.handle.kill()
            return
        over_time = supervised.time_limit_at is not None and now > supervised.time_limit_at
        if over_time and supervised.stop_deadline is None and supervised.kill_reason is None:
            # Like a stop (SIGTERM, then SIGKILL after the grace), but it ends failed, saying why.
            supervised.kill_reason = f"time limit {supervised.max_runtime_seconds} s exceeded"
            logger.warning("workload %s: %s; stopping it", workload_id, supervised.kill_reason)
            supervised.stop_deadline = now + self.config.stop_grace_seconds
            supervised.handle.terminate()
            return
        limit = supervised.handle.runtime_now().get("memory_limit_bytes")  # the watchdog's, once set up
        if limit and supervised.kill_reason is None:
            used = supervised.handle.memory_bytes()
            if used is not None and used > limit:
                supervised.kill_reason = "memory limit exceeded"
                logger.warning("workload %s: %s bytes resident over limit %s; killing", workload_id, used, limit)
                supervised.handle.kill()

    def _finish(self, workload_id: str, supervised: Supervised, exit_) -> None:
        if supervised.kill_reason or exit_.oom:
            to, reason = S.FAILED, supervised.kill_reason or exit_.reason
        elif supervised.stop_requested:
            to, reason = S.STOPPED, f"stopped ({exit_.reason})"
        elif exit_.code == 0:
            to, reason = S.SUCCEEDED, exit_.reason
        else:
            to, reason = S.FAILED, exit_.reason
        supervised.finishing = True
        # Beside the loop: a burst of exits must not hold up heartbeats, log shipping and the
        # other exits behind its clean-ups (an overlay's unmount and removal take milliseconds each).
        self._finisher.submit(self._clean_up_and_report, workload_id, supervised, to, reason, exit_.code,
                              supervised.runtime_news())  # a quick exit does not wait for its limits

    def _clean_up_and_report(self, workload_id: str, supervised: Supervised, to: str, reason: str,
                             exit_code: int | None, runtime: dict | None) -> None:
        """Clean up after an exit, then report it: once the control plane counts the exit, the run's
        uid, GPUs and workspace are free for what it places here next."""
        try:
            supervised.handle.cleanup()
        except Exception:
            logger.exception("workload %s: clean-up after its exit failed", workload_id)
        finally:
            # After its last output (spooled before): the control plane gets the lines, then the exit.
            self._report(workload_id, supervised, to, reason=reason, exit_code=exit_code, runtime=runtime)
            with self.lock:
                self.handles.pop(workload_id, None)
            # Saved by the loop's next pass, once for a burst of exits (each save writes them all).
            self._state_changed = True
            self.wake()
