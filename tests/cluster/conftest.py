"""A real multi-host cluster: one control-plane host and three agent hosts, each a Linux network
namespace on a private bridge (see netlab.py).

    cp      10.231.0.1   gunicorn :18800, Redis :18802, control worker, beat;
                         Postgres :18801 on the host's own loopback only
    parent  10.231.0.11  agent h8-parent (1 cpu)   peers with h8-peer
    child   10.231.0.12  agent h8-child  (2 cpu)   child of h8-parent
    peer    10.231.0.13  agent h8-peer   (2 cpu)

Agent hosts reach the control plane's HTTP port and the broker by address over that network, as
across machines, and have no route to Postgres at all: it listens on the control-plane host's
loopback, which exists only inside that namespace. Agents join with one join token and keep
their node's credential in their data folder. The Postgres (initdb in the lab's folder) and the
Redis are the lab's own, so a test can stop the broker or cut a host off without touching the
machine's services. This test process talks to them (and to gunicorn) through Unix sockets
in the lab's folder: it stays in the machine's own namespace and needs no route into the lab.
The timing settings are left at their defaults: that is what the failure tests measure.

Runs in the Postgres + Redis pass of ``.ci/run`` (it needs root and ``ip netns``); skipped
otherwise, with the reason.
"""

import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.utils import timezone
from rest_framework.authtoken.models import Token

from nodes.models import Node, NodeStatus
from nodes.services import join_token_create
from tests.helpers import wait_for
from workloads.models import ACTIVE, Workload, WorkloadStatus

from .netlab import SUBNET, Lab, clean_leftovers, netns_available

REPO = Path(__file__).resolve().parents[2]
MiB = 1024**2
DB_NAME = "cnet_h8"
PORTS = {"web": 18800, "postgres": 18801, "redis": 18802}
HOSTS = {"cp": 1, "parent": 11, "child": 12, "peer": 13}
# host -> (node_id, flags). Parent < child, peer: a 1.5-cpu workload submitted at the parent
# runs on its child, and on its peer when the child is gone (the default strategy's order).
AGENTS = {
    "parent": ("h8-parent", ["--cpu", "1", "--memory", str(1024 * MiB), "--peer", "h8-peer"]),
    "child": ("h8-child", ["--cpu", "2", "--memory", str(1024 * MiB), "--parent", "h8-parent"]),
    "peer": ("h8-peer", ["--cpu", "2", "--memory", str(1024 * MiB)]),
}
# What agents are given for a database: where Postgres listens on the control-plane host, which
# they cannot reach. An agent that touched the database would fail at once.
AGENT_DATABASE_URL = f"postgres://postgres@{SUBNET}.{HOSTS['cp']}:{PORTS['postgres']}/{DB_NAME}"
MEASURED: list[str] = []  # figures the tests report, printed at the end of the run


def _why_skip() -> str | None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return "cluster tests run in the Postgres + Redis pass: set DATABASE_URL=postgres://..."
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        return "cluster tests run in the Postgres + Redis pass: set CELERY_BROKER_URL=redis://..."
    reason = netns_available()
    if reason:
        return f"cluster tests build hosts from network namespaces: {reason}"
    if not _pg_bin("initdb") or shutil.which("redis-server") is None or shutil.which("setpriv") is None:
        return "cluster tests need PostgreSQL's server binaries, redis-server and setpriv"
    return None


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)  # a host name the web answers to
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Api:
    """The REST API of the control-plane host, through gunicorn's Unix socket."""

    def __init__(self, sock: Path, token: str):
        self.sock = str(sock)
        self.token = token

    def request(self, method: str, path: str, body=None) -> tuple[int, object]:
        conn = UnixHTTPConnection(self.sock)
        try:
            headers = {"Authorization": f"Token {self.token}", "Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body)
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body=None):
        return self.request("POST", path, body if body is not None else {})


class Cluster:
    def __init__(self, lab: Lab, env: dict):
        self.lab = lab
        self.env = env
        self.pg_socket_dir = lab.root / "pg-run"
        self.web_socket = lab.root / "web.sock"
        self.shared = lab.root / "shared"  # every host sees the same filesystem: proof files go here
        self.shared.mkdir()
        self.api: Api | None = None
        self.server = f"http://{lab.address('cp')}:{PORTS['web']}"
        self.restarted_at = timezone.now()  # when the control plane last (re)started
        self.join_token = ""

    def host_env(self, host: str, **extra) -> dict:
        data = self.lab.root / "hosts" / host
        (data / "work").mkdir(parents=True, exist_ok=True)
        return {**self.env, "CNET_DATA_DIR": str(data / "data"), "CNET_WORK_DIR": str(data / "work"), **extra}

    # --- state and broker on the control-plane host ------------------------------------
    def start_postgres(self) -> None:
        data = self.lab.root / "pg-data"
        for path in (data, self.pg_socket_dir):
            path.mkdir()
            shutil.chown(path, "postgres", "postgres")
        subprocess.run([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8"],
                       user="postgres", group="postgres", extra_groups=[], check=True, capture_output=True,
                       timeout=120)
        options = {
            # The control-plane host's loopback: no other host has a route to it.
            "listen_addresses": "127.0.0.1", "port": PORTS["postgres"],
            "unix_socket_directories": str(self.pg_socket_dir),
            # A throwaway database: durability buys nothing here and costs the busy disk.
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "32MB", "max_connections": 80,
            # A host cut off mid-transaction would hold its row locks until TCP gives up
            # (hours); production should set this too (see the report in tests/cluster).
            "idle_in_transaction_session_timeout": "5s",
        }
        argv = [_pg_bin("postgres"), "-D", str(data)]
        for key, value in options.items():
            argv += ["-c", f"{key}={value}"]
        self.lab.spawn("postgres", "cp", argv, env={"PATH": os.environ["PATH"]}, cwd=data, as_user="postgres")

        def ready():
            if not self.lab.alive("postgres"):
                raise AssertionError(f"postgres exited:\n{self.lab.log('postgres')[-2000:]}")
            return subprocess.run([_pg_bin("pg_isready"), "-q", "-h", str(self.pg_socket_dir),
                                   "-p", str(PORTS["postgres"])]).returncode == 0

        wait_for(ready, timeout=60, every=0.1, message="postgres accepting connections")
        subprocess.run([_pg_bin("createdb"), "-h", str(self.pg_socket_dir), "-p", str(PORTS["postgres"]),
                        "-U", "postgres", DB_NAME], check=True, capture_output=True, timeout=60)

    def start_redis(self) -> None:
        (self.lab.root / "redis").mkdir(exist_ok=True)
        self.lab.spawn("redis", "cp", [
            "redis-server", "--bind", self.lab.address("cp"), "--port", str(PORTS["redis"]),
            "--unixsocket", str(self.lab.root / "redis.sock"), "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--dir", str(self.lab.root / "redis"),
        ], env={"PATH": os.environ["PATH"]})
        self.wait_redis()

    def wait_redis(self) -> None:
        import redis

        client = redis.Redis(unix_socket_path=str(self.lab.root / "redis.sock"), socket_timeout=2)

        def up():
            try:
                return client.ping()
            except redis.RedisError:
                return False

        wait_for(up, timeout=30, every=0.05, message="redis up")

    def stop_redis(self) -> None:
        self.lab.kill("redis", 15)

    # --- the control plane --------------------------------------------------------------
    def migrate(self) -> None:
        out = subprocess.run(["ip", "netns", "exec", self.lab.ns("cp"), sys.executable, "manage.py", "migrate",
                              "--noinput", "-v", "0"], cwd=REPO, env=self.host_env("cp"), capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr

    def start_control_plane(self) -> None:
        env = self.host_env("cp")
        celery = [sys.executable, "-m", "celery", "-A", "cnetsite"]
        self.web_socket.unlink(missing_ok=True)
        self.lab.spawn("web", "cp", [
            sys.executable, "-m", "gunicorn", "cnetsite.wsgi:application",
            "--bind", f"{self.lab.address('cp')}:{PORTS['web']}", "--bind", f"unix:{self.web_socket}",
            "--workers", "1", "--threads", "4", "--graceful-timeout", "5",
        ], env=env, cwd=REPO)
        self.lab.spawn("control", "cp", [
            *celery, "worker", "-Q", "control", "--pool", "solo", "--hostname", "control-h8@%h",
            "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel", "INFO",
        ], env=env, cwd=REPO)
        self.lab.spawn("beat", "cp", [
            *celery, "beat", "--loglevel", "INFO",
            "--schedule", str(self.lab.root / "hosts" / "cp" / "data" / "celerybeat-schedule"),
        ], env=env, cwd=REPO)

    def wait_web(self) -> None:
        def answers():
            if not self.lab.alive("web"):
                raise AssertionError(f"gunicorn exited:\n{self.lab.log('web')[-3000:]}")
            try:
                return self.api.get("/api/health")[0] == 200
            except OSError:
                return False

        wait_for(answers, timeout=60, every=0.1, message="web answering")

    def kill_control_plane(self) -> None:
        """kill -9 gunicorn (master and workers), the control worker and beat."""
        for name in ("web", "control", "beat"):
            self.lab.kill(name, 9, group=True)

    def restart_control_plane(self) -> None:
        """Start whichever of gunicorn, the control worker and beat is not running."""
        for name in ("web", "control", "beat"):
            if not self.lab.alive(name):
                if name == "web":
                    self.web_socket.unlink(missing_ok=True)
                self.lab.restart(name)
                self.restarted_at = timezone.now()
        self.wait_web()

    def heal(self) -> None:
        """Plug every cable back, start whatever is not running, wait until all nodes are ready."""
        for host in AGENTS:
            if not self.lab.link_up(host):
                self.lab.set_link(host, True)
        if not self.lab.alive("redis"):
            self.lab.restart("redis")
            self.wait_redis()
        for host in AGENTS:
            if not self.lab.alive(host):
                self.start_agent(host)
        self.restart_control_plane()
        # Ready, and heard from since the control plane last came back: a test that takes it away
        # again starts from nodes whose deadlines their own beats wrote.
        wait_for(lambda: Node.objects.filter(status=NodeStatus.READY, last_heartbeat__gt=self.restarted_at
                                             ).count() == len(AGENTS), timeout=60, message="all nodes ready")

    # --- agents ---------------------------------------------------------------------------
    def start_agent(self, host: str) -> None:
        node_id, flags = AGENTS[host]
        self.lab.spawn(host, host, [
            sys.executable, "manage.py", "runagent", "--node-id", node_id, "--address", self.lab.address(host),
            "--port", str(18810 + HOSTS[host]), *flags, "--server", self.server, "--join-token", self.join_token,
        ], env=self.host_env(host, CNET_LOCAL_NODE_ID=node_id, DATABASE_URL=AGENT_DATABASE_URL), cwd=REPO)

    def wait_registered(self, host: str, *, after_epoch: int = 0) -> int:
        node_id = AGENTS[host][0]

        def registered():
            if not self.lab.alive(host):
                raise AssertionError(f"agent {host} exited:\n{self.lab.log(host)[-3000:]}")
            return Node.objects.filter(node_id=node_id, agent_epoch__gt=after_epoch, status=NodeStatus.READY
                                       ).values_list("agent_epoch", flat=True).first()

        return wait_for(registered, timeout=60, every=0.1, message=f"agent {node_id} registered")

    def connects(self, host: str, address: str, port: int) -> bool:
        """Whether a TCP connection from ``host`` to ``address:port`` is accepted."""
        probe = (f"import socket; socket.create_connection(({address!r}, {port}), timeout=2)")
        out = subprocess.run(["ip", "netns", "exec", self.lab.ns(host), sys.executable, "-c", probe],
                             capture_output=True, timeout=30)
        return out.returncode == 0

    def workload_pids(self, workload_id=None) -> dict[int, str]:
        """Live workload processes in the lab: pid -> the host (namespace) it runs on."""
        found = {}
        for host in AGENTS:
            out = subprocess.run(["ip", "netns", "pids", self.lab.ns(host)], capture_output=True, text=True).stdout
            for pid in map(int, out.split()):
                try:
                    proc = psutil.Process(pid)
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        continue
                    env_id = proc.environ().get("CNET_WORKLOAD_ID")
                except psutil.Error:
                    continue
                if env_id and (workload_id is None or env_id == str(workload_id)):
                    found[pid] = host
        return found


def _child_env(lab: Lab) -> dict:
    """The machine's environment minus our settings: the lab's processes use the defaults."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CNET_", "CELERY_", "DB_", "DATABASE_", "PROMETHEUS_", "DJANGO_"))}
    cp = lab.address("cp")
    return {
        **env,
        # Reachable from the control-plane host only (see AGENT_DATABASE_URL for agents).
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{PORTS['postgres']}/{DB_NAME}",
        # The address agents reach the web by: a host name it answers to.
        "CNET_SERVER_URL": f"http://{cp}:{PORTS['web']}",
        # As for the whole suite (cnetsite/settings_test.py): workloads run this interpreter, so
        # they run under uids of their own only where those can execute it.
        "CNET_WORKLOAD_ISOLATION": os.environ.get("CNET_WORKLOAD_ISOLATION", "1"),
        "CELERY_BROKER_URL": f"redis://{cp}:{PORTS['redis']}/8",
        "DJANGO_SETTINGS_MODULE": "cnetsite.settings",
        "SECRET_KEY": "cluster-test-only-" + os.urandom(8).hex(),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="package")
def cluster(django_db_blocker):
    reason = _why_skip()
    if reason:
        pytest.skip(reason)
    clean_leftovers()
    started = time.monotonic()
    lab = Lab(HOSTS)
    connection = connections["default"]
    saved = dict(connection.settings_dict)
    try:
        lab.build()
        cluster = Cluster(lab, _child_env(lab))
        cluster.start_postgres()
        cluster.start_redis()
        cluster.migrate()
        # This process reads and checks the lab's database through its Unix socket.
        connection.close()
        connection.settings_dict.update(NAME=DB_NAME, USER="postgres", PASSWORD="",
                                        HOST=str(cluster.pg_socket_dir), PORT=str(PORTS["postgres"]))
        with django_db_blocker.unblock():
            user, _ = get_user_model().objects.get_or_create(
                username="h8", defaults={"is_staff": True, "is_superuser": True})
            cluster.api = Api(cluster.web_socket, Token.objects.get_or_create(user=user)[0].key)
            cluster.join_token = join_token_create(ttl_seconds=3600, uses=len(AGENTS))
            cluster.start_control_plane()
            for host in AGENTS:
                cluster.start_agent(host)
            for host in AGENTS:
                cluster.wait_registered(host)
            wait_for(lambda: Node.objects.filter(node_id="h8-child", parent__node_id="h8-parent").exists()
                     and Node.objects.get(node_id="h8-parent").peers.filter(node_id="h8-peer").exists(),
                     timeout=30, message="tree and peer links")
            cluster.wait_web()
            MEASURED.append(f"cluster up (netns, Postgres, Redis, migrate, 3 agents) in "
                            f"{time.monotonic() - started:.1f}s")
            yield cluster
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
        lab.destroy()


@pytest.fixture(autouse=True)
def healthy_cluster(cluster):
    """Each test starts with every link up, every process running and every node ready, and
    leaves nothing running and nothing allocated (even after a failure midway)."""
    cluster.heal()
    yield
    cluster.heal()
    for workload_id in Workload.objects.filter(status__in=[*ACTIVE, WorkloadStatus.PENDING]
                                               ).values_list("pk", flat=True):
        cluster.api.post(f"/api/workloads/{workload_id}/stop")
    wait_for(lambda: not Workload.objects.filter(status__in=[*ACTIVE, WorkloadStatus.PENDING]).exists(),
             timeout=30, message="all workloads ended")
    wait_for(lambda: not cluster.workload_pids(), timeout=30, message="no workload process left")
    wait_for(lambda: not Node.objects.exclude(cpu_allocated_millicores=0, memory_allocated_bytes=0,
                                              gpu_allocated=0, storage_allocated_bytes=0).exists(),
             timeout=10, message="no allocation left on any node")


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("cluster measurements")
        for line in MEASURED:
            terminalreporter.write_line(line)
