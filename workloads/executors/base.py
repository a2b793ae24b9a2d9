"""What every executor provides, and how the agent finds the executor of a kind.

Executors belong to kinds (``workloads.kinds``), which name them by dotted path: each is made
the first time this process needs it, so only agents ever import one.
"""

import ctypes
import functools
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string

from ..kinds import UnknownKind, kind_get, kinds
from .identity import OFF, Identity, IdentityError, Isolation
from .leases import Leases, LeaseUnavailable
from .limits import CgroupLimiter
from .workspace import Workspace

logger = logging.getLogger(__name__)

# A workload's env is merged over the agent's, minus the agent's own configuration and
# anything that looks like a credential: a user's `env` command must not print the
# database URL or the secret key. CNET_WORKLOAD_ENV_PASSTHROUGH names exceptions.
WITHHELD_PREFIXES = ("CNET_", "CELERY_", "DJANGO_", "DATABASE_", "PROMETHEUS_", "REDIS_", "POSTGRES", "PG")
WITHHELD_WORDS = ("SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL", "PRIVATE", "_KEY")


class ExecutorError(Exception):
    """The workload could not be started; the message becomes its failure reason."""


@dataclass
class AgentContext:
    node_id: str
    work_dir: Path
    log_dir: Path
    limiter: CgroupLimiter
    capabilities: dict = field(default_factory=dict)
    # Tells the supervisor a handle has news for it (set-up beside the start has finished).
    wake: Callable[[], None] = lambda: None
    # The agent's data folder: leases of uids and GPUs live in agent/leases/ (default: beside log_dir).
    data_dir: Path | None = None
    # The node's address: where a container's published ports are bound.
    address: str = "127.0.0.1"
    isolation: Isolation = OFF

    def leases(self, what: str) -> Leases:
        return Leases((self.data_dir or self.log_dir.parent) / "agent" / "leases" / self.node_id / what)

    def for_workload(self, workload_id: str, *, owner: str | None = None) -> "WorkloadContext":
        """What one workload is given on this node: its identity, workspace and GPUs. The agent
        makes one per start and adoption; ``release()`` gives it all back."""
        return WorkloadContext(self, workload_id=str(workload_id), owner=owner)


class WorkloadContext:
    """The agent's context as one workload sees it (every attribute of ``AgentContext``), with
    ``work_dir`` its own workspace and ``identity`` the uid it runs as, both made the first time
    an executor asks (a container needs neither), and the GPUs it was assigned by device id."""

    def __init__(self, agent: AgentContext, *, workload_id: str, owner: str | None):
        self.agent = agent
        self.workload_id = workload_id
        self.owner = owner
        self._identity: Identity | None = None
        self._work_dir: Path | None = None

    def __getattr__(self, name):
        return getattr(self.agent, name)

    @property
    def identity(self) -> Identity | None:
        """Who it runs as; None: the agent's own user (isolation off)."""
        if self._identity is None and self.agent.isolation.enabled:
            try:
                self._identity = self.agent.isolation.identity(
                    workload_id=self.workload_id, owner=self.owner, leases=self.agent.leases("uids"))
            except IdentityError as error:
                raise ExecutorError(str(error)) from error
        return self._identity

    @property
    def work_dir(self) -> Path:
        """The agent's work folder as this workload sees it: its own workspace when it has a uid."""
        if self._work_dir is None:
            identity = self.identity
            if identity is None:
                self._work_dir = self.agent.work_dir
            else:
                try:
                    self._work_dir = self._workspace().prepare(lower=self.agent.work_dir, identity=identity,
                                                               hidden=self._hidden())
                except OSError as error:
                    raise ExecutorError(f"its workspace could not be set up: {error}") from error
        return self._work_dir

    def _workspace(self) -> Workspace:
        return Workspace(root=self.agent.isolation.workspace_root, node_id=self.agent.node_id,
                         workload_id=self.workload_id)

    def _hidden(self) -> list[Path]:
        """What must not show in a workspace although it lies in the work folder."""
        folders = [Path(settings.DATA_DIR), self.agent.log_dir, self.agent.isolation.workspace_root]
        return [*folders, *([self.agent.data_dir] if self.agent.data_dir else [])]

    def gpu_ids(self, count: int) -> list[str]:
        """``count`` of the node's GPUs, by device id, leased to this workload alone."""
        if not count:
            return []
        inventory = [gpu_device_id(gpu) for gpu in self.agent.capabilities.get("gpus") or []]
        try:
            return self.agent.leases("gpus").take(self.workload_id, inventory, count=count)
        except LeaseUnavailable:
            held = self.agent.leases("gpus").owners()
            raise ExecutorError(f"needs {count} GPU(s); node {self.agent.node_id} has {len(inventory)}, "
                                f"{len(held)} of them assigned to other workloads") from None

    def release(self) -> None:
        """Give back its workspace, uid and GPUs (it has ended, or never started)."""
        if self.agent.isolation.enabled:
            try:
                self._workspace().remove()
            except OSError as error:
                logger.warning("workload %s: workspace not removed: %s", self.workload_id, error)
        self.agent.leases("uids").release(self.workload_id)
        self.agent.leases("gpus").release(self.workload_id)


def workload_context(context: "AgentContext | WorkloadContext", workload_id: str) -> WorkloadContext:
    """The workload's own context: the one the agent made, or one made here (unit tests pass the
    agent's)."""
    if isinstance(context, WorkloadContext):
        return context
    return context.for_workload(workload_id)


def gpu_device_id(gpu: dict) -> str:
    """The id CUDA_VISIBLE_DEVICES and the engine's device_ids take: its index, else its uuid."""
    return str(gpu["index"]) if gpu.get("index") is not None else str(gpu.get("uuid") or gpu.get("id"))


@dataclass
class Exit:
    """How a workload ended, as the agent reports it."""

    code: int | None
    reason: str
    oom: bool = False


class Handle(ABC):
    """A started workload the supervisor watches."""

    workload_id: str

    @abstractmethod
    def runtime(self) -> dict:
        """Facts to store on the workload so a restarted agent can find it again."""

    def early_runtime(self) -> dict:
        """``runtime()`` without waiting for set-up that runs beside the recording of the start
        (a process's cgroups); the agent stores the rest once it is there."""
        return self.runtime()

    def runtime_settled(self) -> bool:
        """Whether ``runtime()`` answers at once: that set-up, if any, has finished."""
        return True

    def runtime_now(self) -> dict:
        """``runtime()`` without waiting: what is known so far."""
        return self.runtime() if self.runtime_settled() else self.early_runtime()

    @abstractmethod
    def poll(self) -> Exit | None:
        """None while it runs; how it ended once it has."""

    @abstractmethod
    def terminate(self) -> None:
        """Ask it to stop (SIGTERM / docker stop's first step)."""

    @abstractmethod
    def kill(self) -> None:
        """Stop it now (SIGKILL)."""

    @abstractmethod
    def read_logs(self, *, final: bool = False) -> list[tuple[str, str]]:
        """New output since the last call as (stream, text); ``final`` flushes partial lines."""

    def memory_bytes(self) -> int | None:
        """Resident memory, for the watchdog where no cgroup limits it; None if unknown."""
        return None

    def offsets(self) -> dict:
        """How far each log file has been shipped, kept so a restarted agent resumes there."""
        return {}

    def cleanup(self) -> None:  # noqa: B027 - optional hook, most handles hold nothing
        """Release local resources once it has ended and its logs are shipped."""


class Executor(ABC):
    @abstractmethod
    def start(self, workload, context: AgentContext) -> Handle: ...

    @abstractmethod
    def adopt(self, workload, context: AgentContext) -> Handle | None:
        """Re-attach to a workload that survived an agent restart; None if it is gone."""

    def reap_orphans(self, *, known: set[str], context: AgentContext) -> list[str]:
        """Kill what this executor finds running on the node for workloads not in ``known``."""
        return []


def workload_env(workload, context: AgentContext | WorkloadContext, **extra: str) -> dict[str, str]:
    """A workload's environment: the agent's (less what is withheld), the user's ``env``, then ours:
    ``CUDA_VISIBLE_DEVICES`` names the GPUs assigned to it (none: empty, on a node that has some)."""
    passthrough = set(settings.CNET_WORKLOAD_ENV_PASSTHROUGH)
    inherited = {name: value for name, value in os.environ.items() if name in passthrough or not _withheld(name)}
    ours = {"CNET_WORKLOAD_ID": str(workload.pk), "CNET_NODE_ID": context.node_id}
    if workload.gpu_count or context.capabilities.get("gpus"):
        gpus = workload_context(context, str(workload.pk)).gpu_ids(workload.gpu_count)
        ours["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return {**inherited, **workload.config.get("env", {}), **ours, **extra}


def _withheld(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(WITHHELD_PREFIXES) or any(word in upper for word in WITHHELD_WORDS)


def executor_for(workload_type: str) -> Executor:
    try:
        path = kind_get(workload_type).executor
    except UnknownKind:
        raise ExecutorError(f"this agent cannot run {workload_type} workloads (no executor installed)") from None
    return _made(path)


@functools.cache
def _made(path: str) -> Executor:
    return import_string(path)()


def executors() -> list[Executor]:
    """Every registered kind's executor: what the agent reaps orphans with."""
    return [executor_for(kind.name) for kind in kinds()]


class LogTail:
    """Reads what a file gained since last time, in whole lines, remembering its offset.

    The node keeps a log bounded too: the control plane stores a workload's head and tail only
    (``CNET_LOG_MAX_BYTES``), so once the head is read a backlog larger than the tail is skipped,
    saying how much, and the disk blocks already read are given back (a hole punched behind the
    offset; the workload's own descriptor goes on appending). ``remove`` deletes the file once its
    last chunk is in the spool."""

    MAX_PARTIAL = 64 * 1024  # ship a line this long even without its newline
    MAX_READ = 256 * 1024  # one chunk: well inside one POST /api/node/logs (1 MiB)
    FREE_EVERY = 8 * 1024 * 1024  # bytes read between two holes punched

    def __init__(self, path: Path, offset: int = 0):
        self.path = path
        self.offset = offset
        self._partial = b""
        self._freed = 0
        self.keep = int(getattr(settings, "CNET_LOG_MAX_BYTES", 8 * 1024 * 1024))

    def read(self, *, final: bool = False) -> str:
        skipped = 0
        try:
            # One stat, not an open, seek, read and close, for a file that has not grown: most of
            # them, on each pass of the supervisor over everything it runs.
            if os.stat(self.path).st_size <= self.offset and not (final and self._partial):
                return ""
            with open(self.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if self.offset >= self.keep // 2 and size - self.offset > self.keep:
                    skipped = size - self.keep // 2 - self.offset
                    self.offset += skipped
                    self._partial = b""
                file.seek(self.offset)
                data = file.read(self.MAX_READ)
        except FileNotFoundError:
            return ""
        self.offset += len(data)
        if self.offset - self._freed >= self.FREE_EVERY:
            self._freed = punch_hole(self.path, self.offset) or self._freed
        data = self._partial + data
        cut = len(data) if final or len(data) > self.MAX_PARTIAL else data.rfind(b"\n") + 1
        self._partial = data[cut:]
        text = data[:cut].decode("utf-8", errors="replace")
        if skipped:
            text = f"[cnet: {skipped} bytes of output skipped on the node: over the log limit]\n{text}"
        return text

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


_FALLOC_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (linux/falloc.h)


def punch_hole(path: Path, upto: int) -> int | None:
    """Free the disk blocks of ``path`` before ``upto`` (reads there return zeros; the size stays).
    Returns ``upto``, or None where the filesystem cannot (the blocks then stay until removal)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return None
    try:
        done = libc.fallocate(fd, _FALLOC_PUNCH_HOLE, ctypes.c_longlong(0), ctypes.c_longlong(upto))
    finally:
        os.close(fd)
    return upto if done == 0 else None
