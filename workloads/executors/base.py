"""What every executor provides, and how the agent finds the executor of a kind.

Executors belong to kinds (``workloads.kinds``), which name them by dotted path: each is made
the first time this process needs it, so only agents ever import one.
"""

import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string

from ..kinds import UnknownKind, kind_get, kinds
from .limits import CgroupLimiter

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


def workload_env(workload, context: AgentContext, **extra: str) -> dict[str, str]:
    """A workload's environment: the agent's (less what is withheld), the user's ``env``, then ours."""
    passthrough = set(settings.CNET_WORKLOAD_ENV_PASSTHROUGH)
    inherited = {name: value for name, value in os.environ.items() if name in passthrough or not _withheld(name)}
    return {**inherited, **workload.config.get("env", {}),
            "CNET_WORKLOAD_ID": str(workload.pk), "CNET_NODE_ID": context.node_id, **extra}


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
    """Reads what a file gained since last time, in whole lines, remembering its offset."""

    MAX_PARTIAL = 64 * 1024  # ship a line this long even without its newline

    def __init__(self, path: Path, offset: int = 0):
        self.path = path
        self.offset = offset
        self._partial = b""

    def read(self, *, final: bool = False) -> str:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read(4 * 1024 * 1024)
        except FileNotFoundError:
            return ""
        self.offset += len(data)
        data = self._partial + data
        cut = len(data) if final or len(data) > self.MAX_PARTIAL else data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")
