"""Throughput of many small ``true`` jobs end to end, against the fork+exec ceiling of the same run.

    .venv/bin/python bench/throughput.py [--count 2000] [--backends postgres,embedded]
    .venv/bin/python bench/throughput.py --backlog 10000 [--backends embedded]

The ceiling: a loop of ``subprocess.run(["/bin/true"])`` for 2 s, in this process, measured first.
Then, per backend, a control plane as ``manage.py up`` runs it (gunicorn 2 workers x 4 threads, the
control worker, beat) and one agent (``--server`` and a join token), as children in their own
process groups, and:

  (a) one array of ``--count`` ``true`` instances in one ``POST /api/workloads``;
  (b) ``--count`` single submissions of ``true`` from 8 client threads.

Each figure is jobs/s from the first submit to the last exit recorded (the database's
``finished_at``), and its ratio to the ceiling. ``postgres``: ``DATABASE_URL`` (default
postgres://postgres@127.0.0.1:5432/cnet_tput_bench, made anew) and ``CELERY_BROKER_URL`` (default
redis://127.0.0.1:6379/5, flushed); ``embedded``: SQLite and the filesystem broker in a temporary
data folder. Every job asks 0.001 CPU and 16 MiB, and the agent offers 2 CPU and 64 GiB, so all of
them fit at once: nothing waits pending. ``--isolation off`` runs the workloads as the agent's
user (no uid lease, overlay workspace or uid sweep each), to show what that isolation costs.

``--backlog N`` measures issue 16's point 5 instead: N single ``true`` jobs of 0.01 CPU are
submitted (8 threads) while a ``sleep`` holds the whole node, so all wait pending; then it is
stopped and they drain: with the agent offering 2 CPU (200 fit at once, the rest wait as room
frees) and, in a second round, N x 0.01 CPU (all fit at once: no queue). The figure is jobs/s
from the first placement to the last exit, and the ratio of the backlog's rate to the no-queue
one (aim >= 90 %). A figure, not a test: nothing here asserts a timing. Every child is
stopped, and the data folder removed, however the bench ends.
"""

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Children, django_migrated, recreate_database  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cnet_tput_bench")
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/5")
PORT = 18301
NODE_ID = "tput"
ORIGIN = NODE_ID  # the submissions' local node
THREADS = 8
GIB, MIB = 1024**3, 1024**2
JOB = {"type": "process", "config": {"command": "true"}, "requirements": {"cpu": 0.001, "memory": 16 * MIB}}
# Issue 16 point 7's aims: (a) array and (b) single on Postgres + Redis, (c) both embedded.
AIMS = {("postgres", "array"): (500, 0.30), ("postgres", "single"): (200, None),
        ("embedded", "array"): (None, 0.20), ("embedded", "single"): (None, 0.07)}


def fork_exec_ceiling(seconds: float = 2.0) -> float:
    """``/bin/true`` runs per second by a plain loop of ``subprocess.run``: what this machine can start."""
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        subprocess.run(["/bin/true"], check=True)
        runs += 1
    return runs / (time.perf_counter() - started)


# --- a control plane and its agent ----------------------------------------------------------
class Plane:
    """Web, control worker and beat of one backend, and (``agent()``) one agent; ``stop()`` ends them."""

    def __init__(self, backend: str, data_dir: Path):
        self.backend, self.data_dir = backend, data_dir
        self.children = Children(ROOT, data_dir)
        atexit.register(self.children.stop)
        if backend == "postgres":
            recreate_database(DATABASE_URL)
            database, broker = DATABASE_URL, BROKER_URL
            import redis

            redis.Redis.from_url(BROKER_URL).flushdb()
        else:
            database, broker = f"sqlite:///{data_dir / 'db.sqlite3'}", "filesystem://"
        self.env = django_migrated(root=ROOT, database_url=database, broker_url=broker, local_node_id=ORIGIN,
                                   data_dir=data_dir)
        self.env["CNET_SERVER_URL"] = f"http://127.0.0.1:{PORT}"
        self.token = _user_token()
        python = sys.executable
        self.children.spawn("web", [python, "-m", "gunicorn", "cnetsite.wsgi:application", "--bind",
                                    f"127.0.0.1:{PORT}", "--workers", "2", "--threads", "4", "--graceful-timeout",
                                    "5", "--backlog", "4096"], self.env)
        self.children.spawn("control", [python, "-m", "celery", "-A", "cnetsite", "worker", "-Q", "control",
                                        "--concurrency", "1", "--pool", "solo", "--loglevel", "WARNING",
                                        "--hostname", "control@%h", "--without-mingle", "--without-gossip"], self.env)
        self.children.spawn("beat", [python, "-m", "celery", "-A", "cnetsite", "beat", "--loglevel", "WARNING",
                                     "--schedule", str(data_dir / "celerybeat-schedule")], self.env)
        self._wait(self._web_up, 90, "the web server")
        self.agents = 0

    def agent(self, *, cpu: float) -> None:
        """Start the agent (node ``NODE_ID``) offering ``cpu`` cores and 64 GiB; wait until it is ready."""
        from nodes.services import join_token_create

        self.agents += 1
        self.children.spawn(f"agent-{self.agents}", [
            sys.executable, str(ROOT / "manage.py"), "runagent", "--node-id", NODE_ID, "--cpu", str(cpu),
            "--memory", str(64 * GIB), "--server", f"http://127.0.0.1:{PORT}",
            "--join-token", join_token_create(ttl_seconds=3600, uses=None)], self.env)
        self._wait(lambda: _node_status() == "ready" and _node_cpu() == round(cpu * 1000), 90, "the agent")
        time.sleep(1.0)  # its Celery worker subscribes to the node's queue just after it registers

    def agent_stop(self) -> None:
        """Stop the running agent (SIGTERM: it leaves, so its node goes offline at once)."""
        proc = self.children.procs.pop(f"agent-{self.agents}")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        self._wait(lambda: _node_status() == "offline", 30, "the node to go offline")

    def stop(self) -> None:
        self.children.stop()

    def _web_up(self) -> bool:
        import requests

        try:
            return requests.get(f"http://127.0.0.1:{PORT}/api/health", timeout=10).status_code < 500
        except requests.RequestException:
            return False

    def _wait(self, predicate, timeout: float, what: str, every: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            self.children.check()
            time.sleep(every)
        raise RuntimeError(f"{what}: not within {timeout}s (logs in {self.data_dir})")


def _user_token() -> str:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user("tput", password=None)
    return Token.objects.create(user=user).key


def _node_row() -> dict | None:
    from django.db import close_old_connections

    from nodes.models import Node

    close_old_connections()
    return Node.objects.filter(node_id=NODE_ID).values("status", "cpu_millicores").first()


def _node_status() -> str | None:
    row = _node_row()
    return row and row["status"]


def _node_cpu() -> int | None:
    row = _node_row()
    return row and row["cpu_millicores"]


# --- submissions ----------------------------------------------------------------------------
def _session(token: str):
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    return session


def submit_array(token: str, label: str, count: int, job: dict) -> float:
    """One POST of an array of ``count``; the time it was sent."""
    sent = time.time()
    response = _session(token).post(f"http://127.0.0.1:{PORT}/api/workloads", timeout=600,
                                    json={**job, "name": label, "count": count})
    if response.status_code != 201:
        raise RuntimeError(f"array refused: {response.status_code} {response.text[:300]}")
    return sent


def submit_singles(token: str, label: str, count: int, job: dict) -> float:
    """``count`` POSTs from ``THREADS`` threads, one keep-alive session each; the first one's time."""
    local = threading.local()
    errors: list[str] = []

    def submit(i: int) -> None:
        session = getattr(local, "session", None) or _session(token)
        local.session = session
        response = session.post(f"http://127.0.0.1:{PORT}/api/workloads", json={**job, "name": f"{label}-{i}"},
                                timeout=120)
        if response.status_code != 201:
            errors.append(f"{response.status_code} {response.text[:200]}")

    sent = time.time()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(submit, range(count)))
    if errors:
        raise RuntimeError(f"{len(errors)} submissions refused, e.g. {errors[0]}")
    return sent


def wait_ended(plane: Plane, label: str, count: int, timeout: float) -> dict:
    """Wait until the ``count`` jobs named ``label-…`` have ended; their first placement and last
    exit (database times), and how many did not succeed."""
    from django.db import close_old_connections
    from django.db.models import Max, Min

    from workloads.models import Workload

    jobs = Workload.objects.filter(name__startswith=f"{label}-")

    def ended():
        close_old_connections()
        return jobs.filter(finished_at__isnull=False).count() >= count

    plane._wait(ended, timeout, f"{count} jobs {label} to end", every=0.1)
    figures = jobs.aggregate(first_placed=Min("scheduled_at"), last_exit=Max("finished_at"))
    figures["not_succeeded"] = jobs.exclude(status="succeeded").count()
    return figures


# --- the two benches ------------------------------------------------------------------------
def throughput(backend: str, count: int, ceiling: float, data_dir: Path) -> dict:
    plane = Plane(backend, data_dir)
    try:
        plane.agent(cpu=2)
        rates = {}
        for shape, submit in (("array", submit_array), ("single", submit_singles)):
            label = f"{shape}"
            sent = submit(plane.token, label, count, JOB)
            figures = wait_ended(plane, label, count, timeout=max(120.0, count / 5))
            seconds = figures["last_exit"].timestamp() - sent
            rates[shape] = count / seconds
            print(f"  {backend:<8} {shape:<6} {count} jobs in {seconds:6.2f} s: {rates[shape]:7.1f} jobs/s = "
                  f"{rates[shape] / ceiling:6.1%} of the ceiling  {_aim(backend, shape, rates[shape], ceiling)}"
                  + (f"  ({figures['not_succeeded']} did not succeed)" if figures["not_succeeded"] else ""),
                  flush=True)
        return rates
    finally:
        plane.stop()


def _aim(backend: str, shape: str, rate: float, ceiling: float) -> str:
    jobs, share = AIMS[backend, shape]
    parts = []
    if jobs is not None:
        parts.append(f">= {jobs} jobs/s {'met' if rate >= jobs else 'NOT met'}")
    if share is not None:
        parts.append(f">= {share:.0%} of ceiling {'met' if rate / ceiling >= share else 'NOT met'}")
    return "aim: " + ", ".join(parts)


def backlog(backend: str, count: int, ceiling: float, data_dir: Path) -> None:
    """Issue 16 point 5: ``count`` queued jobs draining with room for 200 at once, against the same
    jobs with room for all of them (no queue)."""
    job = {**JOB, "requirements": {"cpu": 0.01, "memory": 16 * MIB}}
    plane = Plane(backend, data_dir)
    rates = {}
    try:
        for label, cpu in (("backlog", 2), ("noqueue", max(2, count * 0.01))):
            if plane.agents:
                plane.agent_stop()
            plane.agent(cpu=cpu)
            # A blocker holding the whole node while the jobs are submitted: they all wait pending.
            blocker = _session(plane.token).post(f"http://127.0.0.1:{PORT}/api/workloads", timeout=60, json={
                "name": f"blocker-{label}", "type": "process", "config": {"command": "sleep", "args": ["3600"]},
                "requirements": {"cpu": cpu, "memory": GIB}}).json()["id"]
            submit_singles(plane.token, label, count, job)
            _session(plane.token).post(f"http://127.0.0.1:{PORT}/api/workloads/{blocker}/stop", timeout=60)
            figures = wait_ended(plane, label, count, timeout=max(300.0, count / 2))
            seconds = (figures["last_exit"] - figures["first_placed"]).total_seconds()
            rates[label] = count / seconds
            fit = round(cpu / 0.01)
            print(f"  {backend:<8} {label:<8} {count} queued, {min(fit, count)} fit at once: drained in "
                  f"{seconds:6.2f} s, {rates[label]:7.1f} jobs/s = {rates[label] / ceiling:6.1%} of the ceiling"
                  + (f"  ({figures['not_succeeded']} did not succeed)" if figures["not_succeeded"] else ""),
                  flush=True)
    finally:
        plane.stop()
    ratio = rates["backlog"] / rates["noqueue"]
    print(f"  {backend:<8} backlog / no queue: {ratio:.1%}  (aim >= 90 %: {'met' if ratio >= 0.9 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--backends", default="postgres,embedded")
    parser.add_argument("--backlog", type=int, metavar="N", help="measure N queued jobs draining instead")
    parser.add_argument("--isolation", choices=["on", "off"], default="on",
                        help="off: workloads run as the agent's user (CNET_WORKLOAD_ISOLATION=0)")
    parser.add_argument("--ceiling", type=float, help=argparse.SUPPRESS)  # a parent run's, for one backend
    parser.add_argument("--keep-logs", help="copy the children's logs to this folder at the end")
    args = parser.parse_args()

    data_root = Path(tempfile.mkdtemp(prefix="cnet-tput-bench-"))
    atexit.register(shutil.rmtree, data_root, ignore_errors=True)
    if args.keep_logs:
        atexit.register(lambda: [shutil.copytree(data_root, args.keep_logs, dirs_exist_ok=True,
                                                 ignore=shutil.ignore_patterns("*.sqlite3*", "broker"))])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))  # runs the atexit hooks
    os.environ["CNET_WORKLOAD_ISOLATION"] = "1" if args.isolation == "on" else "0"  # the agents inherit it
    backends = args.backends.split(",")
    ceiling = args.ceiling or fork_exec_ceiling()
    if len(backends) > 1:
        # Django is set up once per process, on one database: each backend in a run of its own.
        print(f"fork+exec ceiling (subprocess.run(['/bin/true']) for 2 s): {ceiling:.0f} /s", flush=True)
        for backend in backends:
            argv = [f"--count={args.count}", f"--isolation={args.isolation}",
                    *([f"--backlog={args.backlog}"] if args.backlog else []),
                    *([f"--keep-logs={args.keep_logs}"] if args.keep_logs else [])]
            subprocess.run([sys.executable, __file__, *argv, f"--backends={backend}", f"--ceiling={ceiling}"],
                           check=True)
        print(f"fork+exec ceiling measured again at the end: {fork_exec_ceiling():.0f} /s")
        return
    if not args.ceiling:
        print(f"fork+exec ceiling (subprocess.run(['/bin/true']) for 2 s): {ceiling:.0f} /s", flush=True)
    data_dir = data_root / backends[0]
    data_dir.mkdir()
    if args.backlog:
        backlog(backends[0], args.backlog, ceiling, data_dir)
    else:
        throughput(backends[0], args.count, ceiling, data_dir)


if __name__ == "__main__":
    main()
