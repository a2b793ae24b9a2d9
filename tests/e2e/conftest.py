"""A real cluster on one machine: the control plane (gunicorn, a control worker, celery beat)
and four agents.

Needs Postgres (``DATABASE_URL``) and Redis (``CELERY_BROKER_URL``); skipped otherwise.
The agents are the shipped ``configs/config_*.yaml`` started through ``bin/cnet-agent``,
with small capacities and the links given as flags (flags win over the file). They hold no database: their
``DATABASE_URL`` names a port where nothing listens, and they join the control plane's node API
over HTTP with one join token, keeping their credentials in the data folder. The control plane
runs in a database of its own (``cnet_h3_e2e_<random>``, created, migrated and dropped here)
which this test process reads too, so tests see what the control plane writes the moment it commits.

Every child runs in its own session; teardown kills each group and every workload process
that carries this cluster's data folder in its environment, even when a test failed.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from nodes.models import Node, NodeStatus
from nodes.services import join_token_create
from tests.helpers import database_url, free_port, kill_group, wait_for
from workloads.models import ACTIVE, Workload

REPO = Path(__file__).resolve().parents[2]
MiB = 1024**2
# Agents are pointed here for a database: nothing listens, so any use of it would fail loudly.
UNREACHABLE_DATABASE = "postgres://nobody@127.0.0.1:9/unreachable"
# Small declared capacities: parent < child < peers, so placement spills predictably. Links by
# node id: the configs' addresses are per demo (parent and peer1 both serve the seed's 8080).
AGENTS = {
    "parent": ["--cpu", "1", "--memory", str(512 * MiB), "--peer", "peer1", "--peer", "peer2"],
    "child": ["--cpu", "2", "--memory", str(1024 * MiB), "--parent", "parent"],
    "peer1": ["--cpu", "3", "--memory", str(1024 * MiB), "--peer", "peer2"],
    "peer2": ["--cpu", "3", "--memory", str(1024 * MiB), "--peer", "peer1"],
}
TIMINGS = {
    "CNET_HEARTBEAT_SECONDS": "1",
    "CNET_UNHEALTHY_AFTER_BEATS": "3",
    "CNET_OFFLINE_AFTER_SECONDS": "6",
    "CNET_CONTROL_TICK_SECONDS": "0.5",
    "CNET_REDISPATCH_AFTER_SECONDS": "3",
    "CNET_STOP_GRACE_SECONDS": "2",
}


def _why_skip() -> str | None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return "e2e cluster needs Postgres: set DATABASE_URL=postgres://... (and CELERY_BROKER_URL=redis://...)"
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        return "e2e cluster needs Redis: set CELERY_BROKER_URL=redis://... (and DATABASE_URL=postgres://...)"
    return None


def _admin_sql(sql: str) -> None:
    """Run CREATE/DROP DATABASE from the maintenance database (outside any transaction)."""
    import psycopg

    db = settings.DATABASES["default"]
    with psycopg.connect(
        dbname="postgres", user=db.get("USER") or None, password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None, port=db.get("PORT") or None, autocommit=True,
    ) as conn:
        conn.execute(sql)


class Cluster:
    def __init__(self, *, env: dict, data_dir: Path):
        self.env = env
        self.data_dir = data_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.server = f"http://127.0.0.1:{self.port}"
        self.join_token = ""

    # --- processes -----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], **env) -> subprocess.Popen:
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is still running")
        log = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(argv, cwd=REPO, env={**self.env, **env}, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def start_control(self) -> None:
        celery = [sys.executable, "-m", "celery", "-A", "cnetsite"]
        self._spawn("web", [sys.executable, "-m", "gunicorn", "cnetsite.wsgi:application",
                            "--bind", f"127.0.0.1:{self.port}", "--workers", "2", "--threads", "4",
                            "--graceful-timeout", "5"])
        self._spawn("control", [*celery, "worker", "-Q", "control", "--pool", "solo", "--concurrency", "1",
                                "--hostname", "control-e2e@%h", "--without-mingle", "--without-gossip",
                                "--without-heartbeat", "--loglevel", "INFO"])
        self._spawn("beat", [*celery, "beat", "--loglevel", "INFO",
                             "--schedule", str(self.data_dir / "celerybeat-schedule")])

    def start_agent(self, node_id: str, *extra: str) -> int:
        """Start the agent of ``node_id`` and wait until it has registered; returns its epoch."""
        before = Node.objects.filter(node_id=node_id).values_list("agent_epoch", flat=True).first() or 0
        self._spawn(node_id, [str(REPO / "bin" / "cnet-agent"), "-config",
                              str(REPO / "configs" / f"config_{node_id}.yaml"), *AGENTS[node_id],
                              "--server", self.server, "--join-token", self.join_token, *extra],
                    DATABASE_URL=UNREACHABLE_DATABASE)
        return wait_for(
            lambda: Node.objects.filter(node_id=node_id, agent_epoch__gt=before, status=NodeStatus.READY)
            .values_list("agent_epoch", flat=True).first(),
            timeout=30, message=f"agent {node_id} registered",
        )

    def signal(self, name: str, sig: int) -> None:
        os.kill(self.procs[name].pid, sig)

    def kill(self, name: str) -> None:
        """kill -9 the agent process only (its workloads run in sessions of their own)."""
        proc = self.procs[name]
        proc.kill()
        proc.wait(timeout=10)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def log(self, name: str) -> str:
        return (self.data_dir / f"{name}.log").read_text(errors="replace")

    def workload_processes(self, workload_id=None) -> list[psutil.Process]:
        """Live processes started by this cluster's agents (optionally for one workload)."""
        found = []
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                if env.get("CNET_DATA_DIR") != self.env["CNET_DATA_DIR"] or "CNET_WORKLOAD_ID" not in env:
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if workload_id is None or env["CNET_WORKLOAD_ID"] == str(workload_id):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def stop_all(self) -> None:
        for proc in self.procs.values():
            kill_group(proc)
        for proc in self.workload_processes():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()


@pytest.fixture(scope="session")
def cluster(django_db_blocker, tmp_path_factory):
    reason = _why_skip()
    if reason:
        pytest.skip(reason)
    import redis

    db = settings.DATABASES["default"]
    name = f"cnet_h3_e2e_{secrets.token_hex(4)}"
    data_dir = tmp_path_factory.mktemp("cnet-e2e")
    env = {
        **os.environ, **TIMINGS,
        "DATABASE_URL": database_url(db, name),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CNET_DATA_DIR": str(data_dir),
        # Workloads carry it so teardown finds exactly this run's processes.
        "CNET_WORKLOAD_ENV_PASSTHROUGH": "CNET_DATA_DIR",
        "CNET_WORK_DIR": str(data_dir),
        "CNET_LOCAL_NODE_ID": "parent",
        "DJANGO_SETTINGS_MODULE": "cnetsite.settings",
        "PYTHONUNBUFFERED": "1",
    }
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    _purge_queues(broker)
    _admin_sql(f'CREATE DATABASE "{name}"')
    connection = connections["default"]
    old_name = connection.settings_dict["NAME"]
    cluster = Cluster(env=env, data_dir=data_dir)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env,
                       check=True, timeout=120)
        connection.close()
        connection.settings_dict["NAME"] = name
        with django_db_blocker.unblock():
            # One token for the four first joins; a restarted agent uses the credential it kept.
            cluster.join_token = join_token_create(ttl_seconds=3600, uses=len(AGENTS))
            cluster.start_control()
            for node_id in AGENTS:
                cluster.start_agent(node_id)
            # Late links: peer1 named peer2 before it existed, the parent named both.
            wait_for(lambda: Node.objects.get(node_id="peer1").peers.filter(node_id="peer2").exists()
                     and Node.objects.get(node_id="parent").peers.count() == 2, timeout=15, message="peer links")
            user, _ = get_user_model().objects.get_or_create(username="e2e", defaults={"is_staff": True,
                                                                                       "is_superuser": True})
            cluster.token = Token.objects.get_or_create(user=user)[0].key
            yield cluster
    finally:
        cluster.stop_all()
        ours = []
        if connection.settings_dict["NAME"] == name:
            with django_db_blocker.unblock():
                ours = [str(pk) for pk in Workload.objects.values_list("pk", flat=True)]
        connection.close()
        connection.settings_dict["NAME"] = old_name
        _remove_cgroups(list(AGENTS), ours)
        _purge_queues(broker)
        _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _purge_queues(broker) -> None:
    """Our queues, and messages delivered from them but never acked (their consumer was
    killed), which Redis would otherwise hand back after the visibility timeout."""
    queues = ["control", *(f"node.{node}" for node in AGENTS)]
    broker.delete(*queues)
    for tag, raw in broker.hgetall("unacked").items():
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key in queues:
            broker.hdel("unacked", tag)
            broker.zrem("unacked_index", tag)


def _remove_cgroups(node_ids: list[str], workload_ids: list[str]) -> None:
    """Cgroups of our workloads whose agent was killed before it could remove them."""
    root = Path(os.environ.get("CNET_CGROUP_ROOT", "/sys/fs/cgroup"))
    for base in (root, root / "memory", root / "cpu"):
        for node_id in node_ids:
            group = base / "cnet" / node_id
            if group.is_dir():
                for child in group.iterdir():
                    if child.is_dir() and child.name in workload_ids:
                        try:
                            child.rmdir()
                        except OSError:
                            pass
                try:
                    group.rmdir()
                except OSError:
                    pass  # still used (another cluster on this machine): leave it


@pytest.fixture
def api(cluster) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {cluster.token}")
    return client


@pytest.fixture(autouse=True)
def healthy_cluster(request, cluster):
    """Each test starts with all four agents up and nothing running, and must leave no
    allocation behind: once its workloads are ended, every node's allocation is zero."""
    for node_id in AGENTS:
        if not cluster.alive(node_id):
            cluster.start_agent(node_id)
    wait_for(lambda: Node.objects.filter(status=NodeStatus.READY).count() == len(AGENTS), timeout=30,
             message="all nodes ready")
    yield
    from workloads.services import workload_stop

    for workload in Workload.objects.filter(status__in=[*ACTIVE, "pending"]).select_related("node"):
        try:
            workload_stop(workload=workload, reason="test teardown")
        except Exception:  # already ended meanwhile
            pass
    wait_for(lambda: not Workload.objects.filter(status__in=[*ACTIVE, "pending"]).exists(), timeout=30,
             message="all workloads ended")
    wait_for(lambda: not Node.objects.exclude(cpu_allocated_millicores=0, memory_allocated_bytes=0,
                                              gpu_allocated=0, storage_allocated_bytes=0).exists(),
             timeout=10, message="no allocation left on any node")
