"""Resource limits for a started process: cgroup v2, else cgroup v1, else a watchdog.

Detected once per agent. Limits are applied after the spawn (no ``preexec_fn``: it forces
a full fork, ~51 ms from a large parent, measured here), by moving the pid into its cgroup.
"""

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nodes.resources import MILLICORES_PER_CORE

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path(os.environ.get("CNET_CGROUP_ROOT", "/sys/fs/cgroup"))
CPU_PERIOD_US = 100_000


@dataclass
class Limits:
    memory_bytes: int
    cpu_millicores: int

    @classmethod
    def of(cls, workload) -> "Limits":
        """What a workload asked for, as its cgroup limits."""
        return cls(memory_bytes=workload.memory_bytes, cpu_millicores=workload.cpu_millicores)


class CgroupLimiter:
    """Base: one cgroup per workload under ``cnet/<node>/``; subclasses know the file names."""

    kind = "none"

    def __init__(self, *, group: str):
        self.group = group

    def apply(self, *, workload_id: str, pid: int, limits: Limits) -> dict:
        return {}

    def oom_killed(self, runtime: dict) -> bool:
        return False

    def cleanup(self, runtime: dict) -> None:
        for path in runtime.get("cgroups", []):
            try:
                os.rmdir(path)
            except OSError:
                pass  # still has tasks (a stray child) or already gone; harmless

    @contextmanager
    def _removed_on_error(self, created: list[str]):
        """The folders made so far go again if a step fails: a quick job that has exited before it
        could be moved in (ESRCH) would otherwise leave an empty cgroup behind for every run."""
        try:
            yield
        except OSError:
            self.cleanup({"cgroups": created})
            raise

    @staticmethod
    def _write(path: Path, value) -> None:
        path.write_text(str(value))


def cpu_quota_us(millicores: int) -> int:
    """A CFS quota per CPU_PERIOD_US; the kernel refuses one under 1 ms."""
    return max(1000, millicores * CPU_PERIOD_US // MILLICORES_PER_CORE)


def _oom_kills_counted(runtime: dict, file_name: str) -> bool:
    """Whether a cgroup's ``oom_kill`` counter (v2 memory.events, v1 memory.oom_control) is above 0."""
    for path in runtime.get("cgroups", []):
        counters = Path(path) / file_name
        if counters.exists():
            for line in counters.read_text().splitlines():
                name, _, count = line.partition(" ")
                if name == "oom_kill" and int(count) > 0:
                    return True
    return False


class CgroupV2Limiter(CgroupLimiter):
    kind = "cgroup2"

    def apply(self, *, workload_id, pid, limits):
        path = CGROUP_ROOT / self.group / workload_id
        created = [str(path)]
        with self._removed_on_error(created):
            path.mkdir(parents=True, exist_ok=True)
            if limits.memory_bytes:
                self._write(path / "memory.max", limits.memory_bytes)
                self._write(path / "memory.swap.max", 0)
            if limits.cpu_millicores:
                self._write(path / "cpu.max", f"{cpu_quota_us(limits.cpu_millicores)} {CPU_PERIOD_US}")
            self._write(path / "cgroup.procs", pid)
        return {"cgroups": created, "limits": self.kind}

    def oom_killed(self, runtime):
        return _oom_kills_counted(runtime, "memory.events")


class CgroupV1Limiter(CgroupLimiter):
    kind = "cgroup1"

    def apply(self, *, workload_id, pid, limits):
        memory = CGROUP_ROOT / "memory" / self.group / workload_id
        cpu = CGROUP_ROOT / "cpu" / self.group / workload_id
        created = []
        with self._removed_on_error(created):
            if limits.memory_bytes:
                memory.mkdir(parents=True, exist_ok=True)
                created.append(str(memory))
                self._write(memory / "memory.limit_in_bytes", limits.memory_bytes)
                swap = memory / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    self._write(swap, limits.memory_bytes)
                self._write(memory / "cgroup.procs", pid)
            if limits.cpu_millicores:
                cpu.mkdir(parents=True, exist_ok=True)
                created.append(str(cpu))
                self._write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
                self._write(cpu / "cpu.cfs_quota_us", cpu_quota_us(limits.cpu_millicores))
                self._write(cpu / "cgroup.procs", pid)
        return {"cgroups": created, "limits": self.kind}

    def oom_killed(self, runtime):
        return _oom_kills_counted(runtime, "memory.oom_control")


def detect_limiter(*, node_id: str) -> CgroupLimiter:
    """The best limiter this machine allows, proven by creating and removing a test cgroup."""
    group = f"cnet/{node_id}"
    for limiter, probe in (
        (CgroupV2Limiter, CGROUP_ROOT / "cgroup.controllers"),
        (CgroupV1Limiter, CGROUP_ROOT / "memory" / "memory.limit_in_bytes"),
    ):
        if not probe.exists():
            continue
        base = CGROUP_ROOT / group if limiter is CgroupV2Limiter else CGROUP_ROOT / "memory" / group
        try:
            base.mkdir(parents=True, exist_ok=True)
            if limiter is CgroupV2Limiter:
                _enable_v2_controllers(base)
            test = base / "probe"
            test.mkdir(exist_ok=True)
            test.rmdir()
        except OSError as error:
            logger.info("%s not usable here (%s)", limiter.kind, error)
            continue
        logger.info("limits enforced with %s under %s", limiter.kind, group)
        return limiter(group=group)
    logger.warning("no writable cgroup: memory limits enforced by an RSS watchdog, cpu by nice")
    return CgroupLimiter(group=group)


def _enable_v2_controllers(base: Path) -> None:
    """cgroup v2 only delegates controllers a parent enables for its children."""
    path = CGROUP_ROOT
    for part in base.relative_to(CGROUP_ROOT).parts:
        control = path / "cgroup.subtree_control"
        try:
            control.write_text("+memory +cpu")
        except OSError:
            pass  # an ancestor we may not write; the probe above tells if it matters
        path = path / part
    try:
        (base / "cgroup.subtree_control").write_text("+memory +cpu")
    except OSError:
        pass
