"""Resource limits for a started process: cgroup v2, else cgroup v1, else a watchdog.

Detected once per agent. Each workload gets its own cgroup, which also makes it killable whole
(``kill_all``): whatever it started, ``setsid`` and double-forked children included, is in it.

- cgroup v1 (``prepare``): the agent makes the workload's cgroups (memory and cpu where limited,
  pids and freezer always) before the spawn, and the child joins them itself before it execs
  the workload (``join``), so nothing it runs is ever outside them, not even for a moment: a fork
  bomb meets ``pids.max`` from its first fork. The join files are the workload uid's.
- cgroup v2 (``apply``): moving into a cgroup there needs write access to the common ancestor,
  which the workload's uid has not; the agent moves it after the spawn, and a process-count
  rlimit of its exclusive uid bounds what forks before that (``process.spawn``).

No ``preexec_fn`` either way: it forces a full fork, ~51 ms from a large parent, measured here.
"""

import errno
import logging
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from nodes.resources import MILLICORES_PER_CORE

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path(os.environ.get("CNET_CGROUP_ROOT", "/sys/fs/cgroup"))
CPU_PERIOD_US = 100_000
# How long kill_all keeps killing what a workload forks meanwhile before it gives up.
KILL_DEADLINE_SECONDS = 5.0


@dataclass
class Limits:
    memory_bytes: int
    cpu_millicores: int
    pids: int = 0  # the most processes and threads at once; 0: no limit

    @classmethod
    def of(cls, workload) -> "Limits":
        """What a workload asked for, as its cgroup limits (``pids``: its requirement, carried in
        its config, else CNET_WORKLOAD_PIDS_LIMIT)."""
        pids = (workload.config or {}).get("pids") or settings.CNET_WORKLOAD_PIDS_LIMIT
        return cls(memory_bytes=workload.memory_bytes, cpu_millicores=workload.cpu_millicores, pids=pids)


class CgroupLimiter:
    """Base: one cgroup per workload under ``cnet/<node>/``; subclasses know the file names.
    This one enforces nothing (no writable cgroup): memory is watched, processes are found by
    their group and, with an exclusive uid, by their uid."""

    kind = "none"

    def __init__(self, *, group: str):
        self.group = group

    def prepare(self, *, workload_id: str, limits: Limits, uid: int | None) -> dict:
        """Cgroups made before the spawn: ``runtime`` facts, and ``join``, the files the child
        writes its pid to before it execs (none: ``apply`` moves it after the spawn)."""
        return {"join": []}

    def apply(self, *, workload_id: str, pid: int, limits: Limits) -> dict:
        return {}

    def oom_killed(self, runtime: dict) -> bool:
        return False

    def folders(self, workload_id: str) -> list[Path]:
        """Where a workload's cgroups are (or would be): how a restarted agent finds leftovers."""
        return []

    def workloads_with_cgroups(self) -> set[str]:
        """The ids of the workloads that have a cgroup of this node now."""
        return set()

    def holds_whole(self, runtime: dict) -> bool:
        """Whether the workload's cgroups have held it since before it exec'd (it joined them
        itself), so that emptying them ends all of it and no sweep of its uid is needed."""
        return False

    def members(self, runtime: dict) -> set[int]:
        """Every process in the workload's cgroups."""
        pids = set()
        for path in runtime.get("cgroups", []):
            try:
                pids.update(int(pid) for pid in (Path(path) / "cgroup.procs").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
        return pids

    def signal_all(self, runtime: dict, sig: int) -> None:
        for pid in self.members(runtime):
            _signal(pid, sig)

    def kill_all(self, runtime: dict) -> bool:
        """SIGKILL everything in the workload's cgroups, again until they are empty (a fork
        between the listing and the kill); whether they are."""
        if not self._live_members(runtime):
            return True  # nothing in them can fork: no freezing (two writes per cgroup) is needed
        deadline = time.monotonic() + KILL_DEADLINE_SECONDS
        while True:
            with self._frozen(runtime):
                pids = self._live_members(runtime)
                for pid in pids:
                    _signal(pid, signal.SIGKILL)
            if not pids:
                return True
            if time.monotonic() > deadline:
                logger.error("cgroups %s: processes %s survive SIGKILL", runtime.get("cgroups"), sorted(pids)[:10])
                return False
            time.sleep(0.01)  # pacing: the kernel needs a moment to take the killed out

    def _live_members(self, runtime: dict) -> set[int]:
        return {pid for pid in self.members(runtime) if not _zombie(pid)}  # its parent reaps those

    @contextmanager
    def _frozen(self, runtime: dict):
        """Stopped while it is killed, where a freezer exists: it cannot fork past the kill."""
        yield

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


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in {"Z", "X"}
    except (OSError, IndexError):
        return True  # gone already


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as error:
        if error.errno != errno.ESRCH:
            raise


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
            if limits.pids and (path / "pids.max").exists():
                self._write(path / "pids.max", limits.pids)
            self._write(path / "cgroup.procs", pid)
        return {"cgroups": created, "limits": self.kind}

    def folders(self, workload_id):
        return [CGROUP_ROOT / self.group / workload_id]

    def workloads_with_cgroups(self):
        return subfolder_names(CGROUP_ROOT / self.group)

    def kill_all(self, runtime):
        for path in runtime.get("cgroups", []):
            kill = Path(path) / "cgroup.kill"  # Linux >= 5.14: the kernel kills the whole tree, forks included
            if kill.exists():
                try:
                    self._write(kill, 1)
                except FileNotFoundError:
                    pass
        return super().kill_all(runtime)

    @contextmanager
    def _frozen(self, runtime):
        freezes = [Path(path) / "cgroup.freeze" for path in runtime.get("cgroups", [])]
        freezes = [path for path in freezes if path.exists()]
        for path in freezes:
            self._write(path, 1)
        try:
            yield
        finally:
            for path in freezes:
                try:
                    self._write(path, 0)
                except FileNotFoundError:
                    pass

    def oom_killed(self, runtime):
        return _oom_kills_counted(runtime, "memory.events")


class CgroupV1Limiter(CgroupLimiter):
    kind = "cgroup1"
    # pids and freezer make a workload killable whole and bound its forks: always, where mounted.
    ALWAYS = ("pids", "freezer")

    def prepare(self, *, workload_id, limits, uid):
        created: list[str] = []
        with self._removed_on_error(created):
            for controller in self._controllers(limits):
                path = CGROUP_ROOT / controller / self.group / workload_id
                path.mkdir(parents=True, exist_ok=True)
                created.append(str(path))
                if controller == "memory":
                    self._write(path / "memory.limit_in_bytes", limits.memory_bytes)
                    swap = path / "memory.memsw.limit_in_bytes"
                    if swap.exists():
                        self._write(swap, limits.memory_bytes)
                elif controller == "cpu":  # its period is the kernel's default, CPU_PERIOD_US
                    self._write(path / "cpu.cfs_quota_us", cpu_quota_us(limits.cpu_millicores))
                elif controller == "pids":
                    self._write(path / "pids.max", limits.pids or "max")
                if uid is not None:
                    # Only its own pid: v1 lets a writer move a process of its own uid, nothing else.
                    os.chown(path / "cgroup.procs", uid, -1)
        return {"cgroups": created, "limits": self.kind,
                "join": [str(Path(path) / "cgroup.procs") for path in created]}

    def holds_whole(self, runtime):
        # Its uid cannot leave them: every other cgroup.procs is root's or another workload's.
        return runtime.get("limits") == self.kind and bool(runtime.get("cgroups"))

    def _controllers(self, limits: Limits) -> list[str]:
        # cpu last: joined in this order, so the launcher's last steps are not under its quota.
        wanted = [*(["memory"] if limits.memory_bytes else []), *self.ALWAYS,
                  *(["cpu"] if limits.cpu_millicores else [])]
        return [name for name in wanted if (CGROUP_ROOT / name / "cgroup.procs").exists()]

    CONTROLLERS = ("memory", "cpu", *ALWAYS)

    def folders(self, workload_id):
        return [CGROUP_ROOT / name / self.group / workload_id for name in self.CONTROLLERS]

    def workloads_with_cgroups(self):
        return set().union(*(subfolder_names(CGROUP_ROOT / name / self.group) for name in self.CONTROLLERS))

    @contextmanager
    def _frozen(self, runtime):
        states = [Path(path) / "freezer.state" for path in runtime.get("cgroups", [])]
        states = [path for path in states if path.exists()]
        for path in states:
            self._write(path, "FROZEN")
        try:
            yield
        finally:
            for path in states:
                try:
                    self._write(path, "THAWED")  # SIGKILL takes effect once thawed
                except FileNotFoundError:
                    pass

    def oom_killed(self, runtime):
        return _oom_kills_counted(runtime, "memory.oom_control")


def subfolder_names(folder: Path) -> set[str]:
    try:
        return {entry.name for entry in os.scandir(folder) if entry.is_dir()}
    except FileNotFoundError:
        return set()


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
    """cgroup v2 only delegates controllers a parent enables for its children. One at a time: a
    write naming a controller the kernel lacks enables none of them."""
    parts = base.relative_to(CGROUP_ROOT).parts
    for folder in (CGROUP_ROOT.joinpath(*parts[:depth]) for depth in range(len(parts) + 1)):
        for controller in ("+memory", "+cpu", "+pids"):
            try:
                (folder / "cgroup.subtree_control").write_text(controller)
            except OSError:
                pass  # an ancestor we may not write; the probe in detect_limiter tells if it matters
