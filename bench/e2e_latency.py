"""End-to-end latency of a ``true`` workload through the HTTP API, against a raw Celery round trip.

    .venv/bin/python bench/e2e_latency.py [--count 50]

Needs Postgres and Redis (defaults: postgres://postgres@127.0.0.1:5432/cnet_bench2, created if
missing and wiped, and redis://127.0.0.1:6379/2, flushed). Starts, as children in their own
process groups, a control plane as ``manage.py up`` runs it (gunicorn on 127.0.0.1:18201, the
control worker, beat) and one agent (node ``bench``) joined to it with a join token, submits
``true`` workloads one after another through the API and reads when each started and finished
from the database (the agent's own timestamps) against the client's submit time. Then, in the
same run, it starts a plain Celery worker on its own queue and times a task that runs ``true``
the same way (apply_async to the task's own timestamps), times the HTTP layer alone (a POST
answered 404 by Django's middleware on the same server), and finally samples the idle agent's
CPU and RSS. A figure, not a test: it asserts no timing.
Every child is stopped, and the data folder removed, however the bench ends.
"""

import argparse
import atexit
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from celery import Celery
from common import django_migrated, ensure_database  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cnet_bench2")
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/2")
PORT = 18201
NODE_ID = "bench"
RAW_QUEUE = "bench.raw"

# The baseline: the same command run by a bare Celery worker, configured as the agent's is
# (JSON, late acks, prefetch 1, a thread pool), with nothing of ours in between.
raw_app = Celery("bench_raw", broker=BROKER_URL, backend=BROKER_URL)
raw_app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"],
    task_acks_late=True, worker_prefetch_multiplier=1, task_default_queue=RAW_QUEUE,
    broker_connection_retry_on_startup=True,
)


@raw_app.task(name="bench.run_true")
def run_true() -> list[float]:
    started = time.time()
    subprocess.run(["true"], check=True)
    return [started, time.time()]


# --- children -------------------------------------------------------------------------------
CHILDREN: list[subprocess.Popen] = []


def spawn(name: str, argv: list[str], env: dict, log_dir: Path) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    CHILDREN.append(proc)
    return proc


def stop_children() -> None:
    """SIGTERM every child's process group, then SIGKILL what is left after a grace period."""
    for proc in CHILDREN:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in CHILDREN:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)  # stragglers in the group, even if the leader left
        proc.wait()
    CHILDREN.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for proc in CHILDREN:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} while waiting for {what}")
        time.sleep(every)
    raise RuntimeError(f"{what}: not within {timeout}s")


# --- set-up ---------------------------------------------------------------------------------
def setup(data_dir: Path) -> dict:
    env = django_migrated(root=ROOT, database_url=DATABASE_URL, broker_url=BROKER_URL, local_node_id=NODE_ID,
                          data_dir=data_dir)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE nodes_node, workloads_workload, authtoken_token, auth_user CASCADE")
    flush_broker()
    return env


def flush_broker() -> None:
    import redis

    redis.Redis.from_url(BROKER_URL).flushdb()


def make_token() -> str:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user("bench", password=None)
    return Token.objects.create(user=user).key


# --- measurements ---------------------------------------------------------------------------
def run_api(count: int, token: str) -> dict[str, list[float]]:
    """Submit ``true`` one at a time; submit→running and submit→succeeded, from the DB timestamps,
    and where the time goes in between."""
    import requests
    from django.db import close_old_connections

    from workloads.models import Workload

    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    body = {"name": "bench-true", "type": "process", "config": {"command": "true"},
            "requirements": {"cpu": 0.1, "memory": 64 * 1024**2}}
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    for _ in range(count):
        submitted = time.time()
        response = session.post(f"http://127.0.0.1:{PORT}/api/workloads", json=body, timeout=30)
        answered = time.time()
        response.raise_for_status()
        workload_id = response.json()["id"]

        def finished(workload_id=workload_id):
            close_old_connections()
            return Workload.objects.filter(pk=workload_id, finished_at__isnull=False).values(
                "status", "reason", "scheduled_at", "started_at", "finished_at").first()

        row = wait_for(finished, 30, f"workload {workload_id} to finish", every=0.005)
        if row["status"] != "succeeded":
            raise RuntimeError(f"workload {workload_id} ended {row['status']}: {row['reason']}")
        at = {name: row[name].timestamp() for name in ("scheduled_at", "started_at", "finished_at")}
        stages["submit → running"].append(at["started_at"] - submitted)
        stages["submit → succeeded"].append(at["finished_at"] - submitted)
        stages["  submit → placed"].append(at["scheduled_at"] - submitted)
        stages["  submit → HTTP answer"].append(answered - submitted)
        stages["  placed → running"].append(at["started_at"] - at["scheduled_at"])
        stages["  running → exit recorded"].append(at["finished_at"] - at["started_at"])
    return stages


STAGES = ("submit → running", "submit → succeeded", "  submit → placed", "  submit → HTTP answer",
          "  placed → running", "  running → exit recorded")


def run_raw(count: int) -> tuple[list[float], list[float], list[float]]:
    """apply_async → the task started / finished (its own clock) / its result seen by the client."""
    to_start, to_done, to_seen = [], [], []
    for _ in range(count):
        sent = time.time()
        started, done = run_true.apply_async(queue=RAW_QUEUE).get(timeout=30)
        to_seen.append(time.time() - sent)
        to_start.append(started - sent)
        to_done.append(done - sent)
    return to_start, to_done, to_seen


def run_http_floor(count: int) -> list[float]:
    """The same POST to a route that does not exist: gunicorn and Django's middleware, no view."""
    import requests

    session = requests.Session()
    seen = []
    for _ in range(count):
        sent = time.time()
        session.post(f"http://127.0.0.1:{PORT}/no-such-route", json={"name": "floor"}, timeout=30)
        seen.append(time.time() - sent)
    return seen


def idle_usage(pid: int, seconds: float) -> tuple[float, float]:
    """CPU % of one core and RSS (MiB) of the agent and its children over ``seconds`` of idle."""
    import psutil

    def cpu(process):
        return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])

    agent = psutil.Process(pid)
    before, started = cpu(agent), time.monotonic()
    time.sleep(seconds)
    used = cpu(agent) - before
    rss = sum(p.memory_info().rss for p in [agent, *agent.children(recursive=True)])
    return 100 * used / (time.monotonic() - started), rss / 1024**2


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(label: str, values: list[float]) -> str:
    return (f"  {label:<34} p50 {pct(values, 0.5) * 1000:7.1f} ms   p95 {pct(values, 0.95) * 1000:7.1f} ms"
            f"   mean {statistics.mean(values) * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each path first")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--isolation", choices=["on", "off"], default="on",
                        help="off: workloads run as the agent's user (CNET_WORKLOAD_ISOLATION=0), to tell what "
                             "the isolation costs from what the node API does")
    parser.add_argument("--keep-logs", help="copy the children's logs to this folder at the end")
    args = parser.parse_args()
    os.environ["CNET_WORKLOAD_ISOLATION"] = "1" if args.isolation == "on" else "0"  # the agent inherits it

    data_dir = Path(tempfile.mkdtemp(prefix="cnet-e2e-bench-"))
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    if args.keep_logs:
        atexit.register(lambda: [shutil.copy(log, args.keep_logs) for log in data_dir.glob("*.log")])
    atexit.register(flush_broker)  # leftover doorbells (place_pending on the control queue)
    atexit.register(stop_children)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))  # runs the atexit hooks

    ensure_database(DATABASE_URL)
    env = setup(data_dir)
    python, manage = sys.executable, str(ROOT / "manage.py")
    spawn("web", [python, "-m", "gunicorn", "cnetsite.wsgi:application", "--bind", f"127.0.0.1:{PORT}",
                  "--workers", "2", "--threads", "4", "--graceful-timeout", "5"], env, data_dir)
    spawn("control", [python, "-m", "celery", "-A", "cnetsite", "worker", "-Q", "control", "--concurrency", "1",
                      "--pool", "solo", "--loglevel", "WARNING", "--hostname", "control@%h", "--without-mingle",
                      "--without-gossip"], env, data_dir)
    spawn("beat", [python, "-m", "celery", "-A", "cnetsite", "beat", "--loglevel", "WARNING",
                   "--schedule", str(data_dir / "celerybeat-schedule")], env, data_dir)
    from nodes.services import join_token_create

    # --server: without it runagent, named no control plane, would start one of its own (``up``).
    agent = spawn("agent", [python, manage, "runagent", "--node-id", NODE_ID, "--cpu", "2",
                            "--memory", str(2 * 1024**3), "--server", f"http://127.0.0.1:{PORT}",
                            "--join-token", join_token_create(ttl_seconds=3600, uses=1)], env, data_dir)
    spawn("raw-worker", [python, "-m", "celery", "-A", "e2e_latency:raw_app", "worker", "-Q", RAW_QUEUE,
                         "--pool", "threads", "--concurrency", "2", "--without-heartbeat",
                         "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
          {**env, "PYTHONPATH": f"{ROOT / 'bench'}:{ROOT}"}, data_dir)

    import requests

    from nodes.models import Node

    def web_up():
        try:
            return requests.get(f"http://127.0.0.1:{PORT}/api/health", timeout=10).status_code < 500
        except requests.RequestException:
            return False

    wait_for(web_up, 60, "the web server")
    wait_for(lambda: Node.objects.filter(node_id=NODE_ID, status="ready").exists(), 60, "the agent")
    time.sleep(1.0)  # the agent's Celery worker subscribes just after it registers
    token = make_token()
    print(f"e2e latency bench: {args.count} `true` workloads one after another; Postgres "
          f"{urlsplit(DATABASE_URL).path.lstrip('/')}, Redis {BROKER_URL}; gunicorn :{PORT} "
          f"(2 workers x 4 threads), one agent '{NODE_ID}', isolation {args.isolation}")

    run_api(args.warmup, token)
    api = run_api(args.count, token)
    api_done = api["submit → succeeded"]
    run_raw(args.warmup)
    raw_start, raw_done, raw_seen = run_raw(args.count)
    floor = run_http_floor(args.count)

    print("\nthrough the API (client submit time → the agent's timestamps in the database)")
    for name, values in api.items():
        print(line(name, values))
    print("raw Celery round trip (same command, bare worker on its own queue)")
    print(line("apply_async → task started", raw_start))
    print(line("apply_async → task finished", raw_done))
    print(line("apply_async → result seen by client", raw_seen))
    print("floor of the HTTP part (same server, a POST to a route that does not exist)")
    print(line("POST → 404 answer", floor))
    ratio = pct(api_done, 0.5) / pct(raw_done, 0.5)
    print(f"\n  p50 overhead ratio (submit→succeeded / apply_async→finished): {ratio:.2f}x  (aim <= 3x)")
    print(f"  p50 ratio against the result seen by the client: {pct(api_done, 0.5) / pct(raw_seen, 0.5):.2f}x")

    time.sleep(1.0)
    cpu, rss = idle_usage(agent.pid, args.idle_seconds)
    print(f"\nidle agent over {args.idle_seconds:g} s: CPU {cpu:.2f}% of one core, RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
