"""The control plane bench/fleet.py measures: its database and broker made anew, a staff user, a
join token, gunicorn, the control worker and beat as children, and the CPU their processes use."""

import os
import sys
import time
from pathlib import Path

from common import Children, django_migrated
from fleet_agents import BROKER_URL

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cnet_bench_fleet")
ORIGIN = "fleet-bench-origin"  # CNET_LOCAL_NODE_ID, never registered: every node is in scope
WORKLOAD = {"type": "process", "config": {"command": "true"}, "requirements": {"cpu": 0.01, "memory": 1024**2}}
USER, PASSWORD = "fleet", "fleet-bench-password"


def setup_django(data_dir: Path) -> dict:
    env = django_migrated(root=ROOT, database_url=DATABASE_URL, broker_url=BROKER_URL, local_node_id=ORIGIN,
                          data_dir=data_dir)
    wipe(users=True)
    flush_broker()
    return env


def wipe(*, users: bool = False) -> None:
    from django.db import connection

    tables = ["nodes_node", "workloads_workload", "nodes_jointoken"]
    tables += ["authtoken_token", "auth_user"] if users else []
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")


def flush_broker() -> None:
    import redis

    redis.Redis.from_url(BROKER_URL).flushdb()


def make_staff() -> str:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_superuser(USER, email="", password=PASSWORD)
    return Token.objects.create(user=user).key


def make_join_token() -> str:
    from nodes.services import join_token_create

    return join_token_create(ttl_seconds=3600, uses=None)


def start_control_plane(children: Children, env: dict, port: int, workers: int, threads: int) -> None:
    python = sys.executable
    children.spawn("web", [python, "-m", "gunicorn", "cnetsite.wsgi:application", "--bind", f"127.0.0.1:{port}",
                           "--workers", str(workers), "--threads", str(threads), "--graceful-timeout", "5",
                           "--backlog", "4096"], env)
    children.spawn("control", [python, "-m", "celery", "-A", "cnetsite", "worker", "-Q", "control",
                               "--concurrency", "1", "--pool", "solo", "--loglevel", "WARNING",
                               "--hostname", "control@%h", "--without-mingle", "--without-gossip"], env)
    children.spawn("beat", [python, "-m", "celery", "-A", "cnetsite", "beat", "--loglevel", "WARNING",
                            "--schedule", str(Path(env["CNET_DATA_DIR"]) / "celerybeat-schedule")], env)
    import requests

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        children.check()
        try:
            if requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError("the web server did not answer within 90 s")


class CpuMeter:
    """CPU seconds of process trees (gunicorn master and workers, celery) and of shared servers."""

    def __init__(self, children: Children) -> None:
        self.children = children

    def _tree_seconds(self) -> float:
        import psutil

        total = 0.0
        for proc in self.children.procs.values():
            try:
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    times = p.cpu_times()
                    total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    @staticmethod
    def _named_seconds(names: tuple[str, ...]) -> float:
        import psutil

        total = 0.0
        for p in psutil.process_iter(["name", "cpu_times"]):
            if p.info["name"] and p.info["name"].startswith(names) and p.info["cpu_times"]:
                total += p.info["cpu_times"].user + p.info["cpu_times"].system
        return total

    def sample(self) -> dict[str, float]:
        import psutil

        own = psutil.Process().cpu_times()
        return {"control plane": self._tree_seconds(), "postgres": self._named_seconds(("postgres",)),
                "redis": self._named_seconds(("redis-server",)), "simulator": own.user + own.system,
                "wall": time.monotonic()}


def cpu_lines(before: dict, after: dict) -> list[str]:
    wall = after["wall"] - before["wall"]
    cores = os.cpu_count() or 1
    lines = []
    for name in ("control plane", "postgres", "redis", "simulator"):
        used = 100 * (after[name] - before[name]) / wall
        note = {"control plane": " (gunicorn master+workers, celery worker, beat)",
                "postgres": " (every postgres process: others' load included)",
                "redis": " (the whole server)", "simulator": " (this process)"}[name]
        lines.append(f"  CPU {name:<13} {used:6.1f}% of one core, {used / cores:5.1f}% of the machine{note}")
    return lines
