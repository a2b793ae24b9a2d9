"""Local processes: argv (never a shell), own session, output to files, their own uid, workspace and
cgroups (``identity``, ``workspace``, ``limits``); ended whole, whatever they started."""

import errno
import functools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from core.fields import SHELL_OWN, VARIABLE_NAME

from .base import (
    AgentContext,
    Executor,
    ExecutorError,
    Exit,
    Handle,
    LogTail,
    WorkloadContext,
    workload_context,
    workload_env,
)
from .identity import Identity
from .limits import KILL_DEADLINE_SECONDS, Limits, subfolder_names
from .workspace import NOT_WORKSPACES, node_workspaces, prune_shapes

logger = logging.getLogger(__name__)


# Run by the child, as the workload's uid, before it execs the workload: it writes its own pid into
# each of its cgroups' cgroup.procs (argv up to "--"), so everything the workload runs is inside them.
JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo "$$" > "$1" || exit 126; shift; done; shift; exec "$@"'
# The same, after taking its environment from its stdin (``Launch``).
ENTER = '. /dev/stdin || exit 126; exec </dev/null; ' + JOIN_CGROUPS


class ProcessHandle(Handle):
    def __init__(self, *, workload_id: str, pid: int, create_time: float, log_dir: Path,
                 limiter, runtime_extra: dict, scope: WorkloadContext, identity: Identity | None = None,
                 popen: subprocess.Popen | None = None, offsets: dict | None = None):
        self.workload_id = workload_id
        self.pid = pid
        self.create_time = create_time
        self.popen = popen
        self.limiter = limiter
        self.extra = runtime_extra
        self.scope = scope  # what the workload was given here, released by cleanup()
        self.identity = identity
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
                "log_files": {s: str(t.path) for s, t in self.tails.items()},
                **(self.identity.runtime() if self.identity else {}), **self.extra}

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
            self.kill()  # nothing outlives the leader: what it left in its cgroups or under its uid dies with it
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
        """SIGTERM to every process of the workload, not only its leader's group."""
        _kill_group(self.pid, signal.SIGTERM)
        self.limiter.signal_all(self._limits(), signal.SIGTERM)
        if self._uid_may_hold_more():
            for proc in processes_of(self.identity.uid):
                _signal(proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL every process of the workload: its group, its cgroups (``setsid`` and
        double-forked children are still in them) and, with a uid of its own, that uid's."""
        _kill_group(self.pid, signal.SIGKILL)
        emptied = self.limiter.kill_all(self._limits())
        if self._uid_may_hold_more(emptied=emptied):
            kill_uid(self.identity.uid)

    def _uid_may_hold_more(self, *, emptied: bool = True) -> bool:
        """Whether its exclusive uid may run processes its cgroups do not hold. Where they have held
        it since before it exec'd, they are all of it, and the sweep of every process on the machine
        (a read of /proc per process, per exit: 95 % of an agent's main loop in a burst of
        2,000 quick jobs, measured) is skipped."""
        if not (self.identity and self.identity.exclusive):
            return False
        return not (emptied and self.limiter.holds_whole(self._limits()))

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
        runtime = self._limits()
        self.limiter.kill_all(runtime)  # a child forked while the leader was reaped
        self.limiter.cleanup(runtime)
        self.scope.release()
        for tail in self.tails.values():  # its output is in the spool by now
            tail.remove()


class ProcessExecutor(Executor):
    def start(self, workload, context: AgentContext | WorkloadContext) -> ProcessHandle:
        config = workload.config
        scope = workload_context(context, str(workload.pk))
        try:
            env = workload_env(workload, scope)
            argv = [resolve_command(config["command"], env.get("PATH")), *config.get("args", [])]
            cwd = working_dir(scope.work_dir, config.get("working_dir"))
            return spawn(workload_id=str(workload.pk), argv=argv, env=env, cwd=cwd, context=scope,
                         limits=Limits.of(workload))
        except ExecutorError:
            scope.release()
            raise

    def adopt(self, workload, context: AgentContext | WorkloadContext) -> ProcessHandle | None:
        runtime = workload.runtime or {}
        pid, create_time = runtime.get("pid"), runtime.get("create_time")
        if not pid or not _alive(pid, create_time):
            return None
        extra = {k: v for k, v in runtime.items() if k in {"cgroups", "limits"}}
        return ProcessHandle(workload_id=str(workload.pk), pid=pid, create_time=create_time,
                             log_dir=context.log_dir, limiter=context.limiter, runtime_extra=extra,
                             scope=workload_context(context, str(workload.pk)),
                             identity=Identity.from_runtime(runtime), offsets=runtime.get("log_offsets"))

    def reap_orphans(self, *, known: set[str], context: AgentContext) -> list[str]:
        """End what is left on this node of workloads that do not run here any more (an agent
        restart found their leader gone, or them no longer wanted): their cgroups' processes, their
        uid's, their workspaces and their leases of uids and GPUs; then the workspace shapes nothing
        stands on. For every kind: uids, GPUs and workspaces are handed out by the agent's context,
        whichever executor asked."""
        uids, gpus = context.leases("uids"), context.leases("gpus")
        leftovers = context.limiter.workloads_with_cgroups() | uids.stale(known) | gpus.stale(known)
        if context.isolation.enabled:
            workspaces = node_workspaces(context.isolation.workspace_root, context.node_id)
            leftovers |= subfolder_names(workspaces) - NOT_WORKSPACES
        reaped = []
        for workload_id in sorted(leftovers - known - {"probe"}):
            runtime = {"cgroups": [str(path) for path in context.limiter.folders(workload_id) if path.exists()]}
            context.limiter.kill_all(runtime)
            for uid in uids.held_by(workload_id):
                kill_uid(int(uid))
            context.limiter.cleanup(runtime)
            context.for_workload(workload_id).release()
            logger.warning("workload %s: ended what it left on %s (cgroups, uid, workspace, GPUs)",
                           workload_id, context.node_id)
            reaped.append(workload_id)
        if context.isolation.enabled:
            prune_shapes(workspaces)
        return reaped


def spawn(*, workload_id: str, argv: list[str], env: dict, cwd: Path, context: AgentContext | WorkloadContext,
          limits: Limits, stdin: int = subprocess.DEVNULL, append: bool = False) -> ProcessHandle:
    """Start argv in its own session, as the workload's identity, inside its cgroups, with output
    to the workload's log files. Where the child cannot join its cgroups itself (cgroup v2, see
    ``limits``), the agent moves it after the spawn (``ProcessHandle.confine``). ``stdin``: a pipe
    for a caller that writes its input once it is confined; ``append``: a later step of the same
    run (its output follows the earlier steps' in the same files)."""
    scope = workload_context(context, workload_id)
    identity = scope.identity
    context.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        confinement = context.limiter.prepare(workload_id=workload_id, limits=limits,
                                              uid=identity.uid if identity else None)
    except OSError as error:
        logger.warning("workload %s: cgroups not prepared (%s); watchdog only", workload_id, error)
        confinement = {"join": []}
    join = confinement.pop("join")
    try:
        launch = Launch.of(argv, join=join, identity=identity, pids=limits.pids, env=env, stdin=stdin)
    except (OSError, ValueError) as error:  # no memfd left; a value no environment can carry
        context.limiter.cleanup(confinement)
        raise ExecutorError(f"could not start {argv[0]!r}: {error}") from error
    # "wb": a restarted workload begins new files; its earlier runs' output is in the database.
    mode = "ab" if append else "wb"
    with launch, open(log_path(context.log_dir, workload_id, "stdout"), mode) as out, \
            open(log_path(context.log_dir, workload_id, "stderr"), mode) as err:
        try:
            popen = subprocess.Popen(launch.argv, stdin=launch.stdin, stdout=out, stderr=err, env=launch.env,
                                     cwd=cwd, start_new_session=True, close_fds=True, **launch.switch)
        except OSError as error:
            context.limiter.cleanup(confinement)
            raise ExecutorError(f"could not start {argv[0]!r}: {error.strerror or error}") from error
    handle = ProcessHandle(workload_id=workload_id, pid=popen.pid, create_time=0.0, log_dir=context.log_dir,
                           limiter=context.limiter, runtime_extra=confinement, scope=scope, identity=identity,
                           popen=popen)
    if not join:
        handle.confine(limits, then=context.wake)
    try:
        handle.create_time = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        pass  # already gone; poll() will report its exit
    logger.info("workload %s: started pid %s: %s", workload_id, popen.pid, argv)
    return handle


class Launch:
    """How the agent starts a workload: the argv of its launcher, which execs the workload, and
    what ``Popen`` is given.

    As another uid, ``setpriv`` switches to it and the workload's environment is handed over
    only after the switch: the launcher's shell (``ENTER``) reads it from its stdin, a memfd of
    ``export`` lines, and takes /dev/null as its stdin. So the one program that runs as root does
    so with an empty environment (an ``LD_PRELOAD`` the user names is never obeyed by root), and
    ``Popen`` switches no uid itself: it can vfork. Switching in ``Popen`` (``user=``) forks the
    whole agent, 7 ms per start at its size and most of an isolated start's cost (measured:
    ``bench/throughput.py``). That way remains for an input written to the workload's stdin and
    for a node without ``setpriv``.

    Then, in order: no-new-privileges when it runs as a uid of its own (setuid programs give it
    nothing); where the child cannot join its cgroups (v2), a process-count rlimit for an
    exclusive uid (every process of that uid is the workload's); last, the cgroup join, so that no
    step of the launcher runs under the workload's CPU quota (at 0.001 CPU, 1 ms per 100 ms, a
    ``setpriv`` exec'd after the join made a ``true`` take 12 ms, measured)."""

    def __init__(self, argv: list[str], *, env: dict, stdin, switch: dict):
        self.argv, self.env, self.stdin, self.switch = argv, env, stdin, switch

    @classmethod
    def of(cls, argv: list[str], *, join: list[str], identity: Identity | None, pids: int, env: dict,
           stdin) -> "Launch":
        setpriv = _agent_tool("setpriv") if identity is not None else None
        rlimit = []
        if identity is not None and not join and identity.exclusive and pids and (prlimit := _agent_tool("prlimit")):
            rlimit = [prlimit, f"--nproc={pids}", "--"]
        if setpriv and stdin == subprocess.DEVNULL:
            groups = ",".join(map(str, identity.groups))
            handover = _exports_memfd(env)
            return cls([setpriv, f"--reuid={identity.uid}", f"--regid={identity.gid}",
                        f"--groups={groups}" if groups else "--clear-groups", "--no-new-privs", "--", *rlimit,
                        "/bin/sh", "-c", ENTER, "cnet-enter", *join, "--", *argv],
                       env={}, stdin=handover, switch={})
        no_new_privs = [setpriv, "--no-new-privs", "--"] if setpriv else []
        join_cgroups = ["/bin/sh", "-c", JOIN_CGROUPS, "cnet-join", *join, "--"] if join else []
        return cls([*no_new_privs, *rlimit, *join_cgroups, *argv], env=env, stdin=stdin,
                   switch=identity.popen_kwargs() if identity else {})

    def __enter__(self) -> "Launch":
        return self

    def __exit__(self, *exc) -> None:
        if not isinstance(self.stdin, int):  # the memfd ENTER reads the environment from
            self.stdin.close()


@functools.cache
def _agent_tool(name: str) -> str | None:
    """Where the agent's own tool is, looked up once (a search of PATH per start showed up)."""
    return shutil.which(name)


def _exports_memfd(env: dict):
    """A memfd, at its start, of the lines that export ``env`` in a POSIX shell. A name no shell
    exports, or one a shell keeps for itself, can only be the agent's own (a workload's are
    refused at submit): it is left out, as a shell would leave it out or set it itself."""
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items()
                      if VARIABLE_NAME.fullmatch(name) and name not in SHELL_OWN)
    handover = os.fdopen(os.memfd_create("cnet-env", os.MFD_CLOEXEC), "w+b")
    handover.write(exports.encode(errors="surrogateescape"))  # as os.environ decoded them
    handover.seek(0)
    return handover


def processes_of(uid: int) -> list[psutil.Process]:
    """The live processes of a uid (a zombie is dead already; its parent reaps it)."""
    return [proc for proc in psutil.process_iter(["uids", "status"])
            if proc.info["uids"] and proc.info["uids"].real == uid and proc.info["status"] != psutil.STATUS_ZOMBIE]


def kill_uid(uid: int) -> None:
    """SIGKILL every process of a uid, again until there is none (it may fork meanwhile)."""
    deadline = time.monotonic() + KILL_DEADLINE_SECONDS
    while (procs := processes_of(uid)) and time.monotonic() < deadline:
        for proc in procs:
            _signal(proc.pid, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=0.05)
    if procs:
        logger.error("uid %s: processes %s survive SIGKILL", uid, [proc.pid for proc in procs][:10])


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as error:
        if error.errno != errno.ESRCH:
            raise


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError as error:
        if error.errno not in (errno.ESRCH, errno.EPERM):  # gone, or its number is another's now
            raise


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
