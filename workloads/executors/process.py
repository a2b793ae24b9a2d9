"""Local processes: argv (never a shell), own process group, output to files, limits after spawn."""

import errno
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

from .base import AgentContext, Executor, ExecutorError, Exit, Handle, LogTail, workload_env
from .limits import Limits

logger = logging.getLogger(__name__)


class ProcessHandle(Handle):
    def __init__(self, *, workload_id: str, pid: int, create_time: float, log_dir: Path,
                 limiter, runtime_extra: dict, popen: subprocess.Popen | None = None,
                 offsets: dict | None = None):
        self.workload_id = workload_id
        self.pid = pid
        self.create_time = create_time
        self.popen = popen
        self.limiter = limiter
        self.extra = runtime_extra
        self._confined = threading.Event()  # its limits are in place (or it needs none set up here)
        self._confined.set()
        offsets = offsets or {}
        self.tails = {
            stream: LogTail(log_path(log_dir, workload_id, stream), offsets.get(stream, 0))
            for stream in ("stdout", "stderr")
        }

    def runtime(self) -> dict:
        return {**self.early_runtime(), **self._limits()}

    def early_runtime(self) -> dict:
        return {"pid": self.pid, "pgid": self.pid, "create_time": self.create_time,
                "log_files": {s: str(t.path) for s, t in self.tails.items()}, **self.extra}

    def confine(self, limits: Limits, *, then: Callable[[], None]) -> None:
        """Put the process under its limits, in a thread, and call ``then`` once they are in place:
        moving a process into a memory cgroup waits for an RCU grace period (12 ms of a 20 ms start
        here, under load), which need not hold up recording the start. The process is confined no
        later than if it waited."""
        def apply():
            try:
                self._apply(limits)
            finally:
                self._confined.set()
                then()

        self._confined.clear()
        threading.Thread(target=apply, name=f"confine-{self.pid}", daemon=True).start()

    def runtime_settled(self) -> bool:
        return self._confined.is_set()

    def _apply(self, limits: Limits) -> None:
        try:
            extra = self.limiter.apply(workload_id=self.workload_id, pid=self.pid, limits=limits)
        except OSError as error:
            if error.errno == errno.ESRCH:
                return  # it has already exited (a quick job); its pid may already name another process
            logger.warning("workload %s: cgroup limits not applied (%s); watchdog only", self.workload_id, error)
            extra = {}
        if not extra.get("limits"):
            extra = {"limits": "watchdog", "memory_limit_bytes": limits.memory_bytes}
            _nice(self.pid)
        self.extra.update(extra)  # update, not replace: an executor may add its own keys meanwhile

    def _oom_killed(self, *, wait: bool) -> bool:
        """Whether its cgroup's OOM killer ended it. Only a leader killed by SIGKILL, what that
        killer sends, waits for its limits to be in place; any other exit before then (a quick
        job) cannot have come from a cgroup it was not yet in, so its end is reported at once."""
        if not wait and not self._confined.is_set():
            return False
        return self.limiter.oom_killed(self._limits())

    def _limits(self) -> dict:
        """``extra`` once the limits are in place."""
        self._confined.wait()
        return self.extra

    def offsets(self) -> dict:
        return {stream: tail.offset for stream, tail in self.tails.items()}

    def poll(self) -> Exit | None:
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                return None
            self._kill_group(signal.SIGKILL)  # leftovers of the group die with the leader
            return self._exit(code)
        # Re-adopted after an agent restart: not our child, so no exit code to wait for,
        # unless it is still a zombie (its new parent has not reaped it yet): then /proc says.
        if _alive(self.pid, self.create_time):
            return None
        code = _zombie_exit_code(self.pid, self.create_time)
        if code is not None:
            return self._exit(code)
        return Exit(None, "process ended while re-adopted after an agent restart; exit code unknown")

    def _exit(self, code: int) -> Exit:
        if self._oom_killed(wait=code == -signal.SIGKILL):
            return Exit(code, "memory limit exceeded", oom=True)
        if code < 0:
            return Exit(code, f"killed by signal {signal.Signals(-code).name}")
        return Exit(code, "exited with code 0" if code == 0 else f"exited with code {code}")

    def terminate(self) -> None:
        self._kill_group(signal.SIGTERM)

    def kill(self) -> None:
        self._kill_group(signal.SIGKILL)

    def _kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except OSError as error:
            if error.errno != errno.ESRCH:
                raise

    def read_logs(self, *, final=False):
        return [(stream, text) for stream, tail in self.tails.items() if (text := tail.read(final=final))]

    def memory_bytes(self) -> int | None:
        total = 0
        try:
            leader = psutil.Process(self.pid)
            for proc in [leader, *leader.children(recursive=True)]:
                total += proc.memory_info().rss
        except psutil.Error:
            return None
        return total

    def cleanup(self) -> None:
        self.limiter.cleanup(self._limits())


class ProcessExecutor(Executor):
    def start(self, workload, context: AgentContext) -> ProcessHandle:
        config = workload.config
        env = workload_env(workload, context)
        argv = [resolve_command(config["command"], env.get("PATH")), *config.get("args", [])]
        cwd = working_dir(context.work_dir, config.get("working_dir"))
        return spawn(workload_id=str(workload.pk), argv=argv, env=env, cwd=cwd, context=context,
                     limits=Limits.of(workload))

    def adopt(self, workload, context: AgentContext) -> ProcessHandle | None:
        runtime = workload.runtime or {}
        pid, create_time = runtime.get("pid"), runtime.get("create_time")
        if not pid or not _alive(pid, create_time):
            return None
        extra = {k: v for k, v in runtime.items() if k in {"cgroups", "limits"}}
        return ProcessHandle(workload_id=str(workload.pk), pid=pid, create_time=create_time,
                             log_dir=context.log_dir, limiter=context.limiter, runtime_extra=extra,
                             offsets=runtime.get("log_offsets"))


def spawn(*, workload_id: str, argv: list[str], env: dict, cwd: Path, context: AgentContext,
          limits: Limits) -> ProcessHandle:
    """Start argv in its own session with output to the workload's log files, then limit it
    (``ProcessHandle.confine``)."""
    context.log_dir.mkdir(parents=True, exist_ok=True)
    # "wb": a restarted workload begins new files; its earlier runs' output is in the database.
    with open(log_path(context.log_dir, workload_id, "stdout"), "wb") as out, \
            open(log_path(context.log_dir, workload_id, "stderr"), "wb") as err:
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                     cwd=cwd, start_new_session=True, close_fds=True)
        except OSError as error:
            raise ExecutorError(f"could not start {argv[0]!r}: {error.strerror or error}") from error
    handle = ProcessHandle(workload_id=workload_id, pid=popen.pid, create_time=0.0, log_dir=context.log_dir,
                           limiter=context.limiter, runtime_extra={}, popen=popen)
    handle.confine(limits, then=context.wake)
    try:
        handle.create_time = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        pass  # already gone; poll() will report its exit
    logger.info("workload %s: started pid %s: %s", workload_id, popen.pid, argv)
    return handle


def resolve_command(command: str, path: str | None) -> str:
    found = shutil.which(command, path=path) if "/" not in command else command
    if not found:
        raise ExecutorError(f"command not found: {command!r}")
    return found


def working_dir(root: Path, relative: str | None) -> Path:
    """The workload's folder, which must stay inside the agent's work folder."""
    cwd = (root / (relative or ".")).resolve()
    if cwd != root.resolve() and root.resolve() not in cwd.parents:
        raise ExecutorError(f"working_dir {relative!r} leaves the agent's work folder")
    if not cwd.is_dir():
        raise ExecutorError(f"working_dir {relative!r} does not exist on this node")
    return cwd


def log_path(log_dir: Path, workload_id: str, stream: str) -> Path:
    return log_dir / f"{workload_id}.{stream}.log"


def _alive(pid: int, create_time: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        same = create_time is None or abs(proc.create_time() - create_time) < 0.01
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _zombie_exit_code(pid: int, create_time: float | None) -> int | None:
    """The exit code of an unreaped process from /proc/<pid>/stat (field 52, Linux >= 3.5)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE:
            return None
        if create_time is not None and abs(proc.create_time() - create_time) >= 0.01:
            return None
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return os.waitstatus_to_exitcode(int(fields[-1])) if len(fields) >= 50 else None
    except (psutil.Error, OSError, ValueError):
        return None


def _nice(pid: int) -> None:
    try:
        psutil.Process(pid).nice(10)
    except psutil.Error:
        pass
