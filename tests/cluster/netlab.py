"""Hosts made of Linux network namespaces, wired to one bridge: a lab that cleans up after itself.

Layout (nothing is added to the machine's own network namespace)::

    netns <prefix>-sw      bridge br0, one port per host (p-<host>)
    netns <prefix>-<host>  eth0 = 10.231.0.<n>/24, lo

The subnet exists only inside these namespaces, so a run never sends a packet to any address
outside the machine, and two runs at once do not collide (each has its own bridge). The prefix
carries the pid of the pytest process that owns the lab, so leftovers of a crashed run (its pid
is gone) are found and removed by the next one. Processes run inside a host with
``ip netns exec`` in sessions of their own; teardown kills every process in each namespace
(``ip netns pids``: that covers workloads the agents started too), then deletes the namespaces,
which removes their links and the bridge.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from tests.helpers import kill_group

PREFIX = "cnh8"
SUBNET = "10.231.0"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def netns_available() -> str | None:
    """None if this machine can build the lab, else why not."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install -y iproute2)"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except subprocess.CalledProcessError as error:
        return f"`ip netns add` failed here: {error.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_netns_processes(ns: str) -> None:
    """SIGKILL everything whose network namespace is ``ns``, and wait until it is gone."""
    for _ in range(50):
        out = ip("netns", "pids", ns, check=False).stdout.split()
        pids = [int(pid) for pid in out if pid.isdigit() and int(pid) != os.getpid()]
        alive = [pid for pid in pids if _pid_alive(pid)]
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)  # teardown only: give the kernel a moment to reap


def clean_leftovers() -> list[str]:
    """Remove namespaces and folders of earlier runs whose pytest process is gone."""
    removed = []
    listed = ip("netns", "list", check=False).stdout.splitlines()
    for line in listed:
        name = line.split()[0] if line.split() else ""
        match = _NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _kill_netns_processes(name)
            ip("netns", "del", name, check=False)
            removed.append(name)
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        match = _NAME.match(path.name + "-")
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


class Lab:
    """A switch and hosts. ``hosts`` maps a host name to the last byte of its address."""

    def __init__(self, hosts: dict[str, int]):
        self.run = f"{PREFIX}-{os.getpid()}"
        self.hosts = hosts
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.run}-"))
        self.root.chmod(0o755)  # the dedicated Postgres runs as user postgres under here
        self.created: list[str] = []
        self.procs: dict[str, subprocess.Popen] = {}
        self.how: dict[str, dict] = {}  # name -> spawn()'s arguments, for restart()

    def ns(self, host: str) -> str:
        return f"{self.run}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts[host]}"

    # --- the network ----------------------------------------------------------------------
    def build(self) -> None:
        switch = self.ns("sw")
        self._add_ns(switch)
        ip("-n", switch, "link", "add", "name", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "dev", "br0", "up")
        for host in self.hosts:
            ns = self.ns(host)
            self._add_ns(ns)
            port = f"p-{host}"
            ip("-n", switch, "link", "add", "name", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", switch, "link", "set", "dev", port, "master", "br0")
            ip("-n", switch, "link", "set", "dev", port, "up")
            ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "dev", "eth0", "up")
            ip("-n", ns, "link", "set", "dev", "lo", "up")

    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)

    def set_link(self, host: str, up: bool) -> None:
        """Unplug (or plug back) the host's cable at the switch."""
        ip("-n", self.ns("sw"), "link", "set", "dev", f"p-{host}", "up" if up else "down")

    def link_up(self, host: str) -> bool:
        out = ip("-n", self.ns("sw"), "-o", "link", "show", "dev", f"p-{host}").stdout
        return "state DOWN" not in out and ",UP" in out

    # --- processes ------------------------------------------------------------------------
    def spawn(self, name: str, host: str, argv: list[str], *, env: dict, cwd: Path | str | None = None,
              as_user: str | None = None) -> subprocess.Popen:
        """Start ``argv`` on ``host`` (inside its namespace), in a session of its own, output to
        ``logs/<name>.log``. ``as_user`` drops root after entering the namespace."""
        if self.alive(name):
            raise RuntimeError(f"{name} is still running")
        self.how[name] = dict(host=host, argv=argv, env=env, cwd=cwd, as_user=as_user)
        prefix = ["ip", "netns", "exec", self.ns(host)]
        if as_user:
            prefix += ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", "--"]
        (self.root / "logs").mkdir(exist_ok=True)
        with open(self.root / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([*prefix, *argv], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def restart(self, name: str) -> subprocess.Popen:
        """Start ``name`` again as it was started before."""
        how = self.how[name]
        return self.spawn(name, how["host"], how["argv"], env=how["env"], cwd=how["cwd"], as_user=how["as_user"])

    def proc(self, name: str) -> subprocess.Popen:
        return self.procs[name]

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def kill(self, name: str, sig: int = signal.SIGKILL, *, group: bool = False) -> None:
        """Signal a process (or its whole session's group) and wait for it to end."""
        proc = self.proc(name)
        try:
            (os.killpg if group else os.kill)(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- teardown -------------------------------------------------------------------------
    def destroy(self) -> None:
        """Kill every process in every host, delete the namespaces (links and bridge go with
        them) and the folder. Safe to call twice and after a partial build."""
        for name in reversed(self.created):
            _kill_netns_processes(name)
        for proc in self.procs.values():
            kill_group(proc)
        for name in reversed(self.created):
            ip("netns", "del", name, check=False)
        self.created.clear()
        shutil.rmtree(self.root, ignore_errors=True)
