"""A fleet simulator: N simulated agents in one process against a real control plane.

    .venv/bin/python bench/fleet.py --nodes 1000 [--duration 30] [--submissions 2000]

The idea of Kubernetes' KWOK and Nomad's node simulators. Needs Postgres and Redis (defaults:
postgres://postgres@127.0.0.1:5432/cnet_bench_fleet, dropped and created anew, and
redis://127.0.0.1:6379/9, flushed). Starts, as children in their own process groups, the
control plane as ``manage.py up`` runs it: gunicorn (``cnetsite.wsgi`` on 127.0.0.1:--port),
the control worker (``-Q control``, solo pool) and beat. The local node the submissions name
(``CNET_LOCAL_NODE_ID``) is not registered, so every node of the fleet is in their scope.

Each simulated agent speaks the real node API over keep-alive connections (httpx, asyncio,
one client, --concurrency requests at most in flight): it joins with one join token, registers
(8 cores, 32 GiB), then beats at a random point of its first interval and afterwards at the
interval each answer gives (``heartbeat_seconds``; the control plane may grow it with the
fleet). Work reaches it two ways, as the issue has it: the heartbeat's ``work`` list, and the
doorbell. N Celery consumers do not fit in one process, so the doorbell is read another way:
Celery pushes each start message on the Redis list named after the node's queue, and one Lua
script (every --doorbell-every seconds) pops what all the fleet's lists hold; a ring makes that
node ``GET /api/node/work``, as an agent does on a start message. A started workload is
reported ``running``, then ``succeeded`` (exit code 0) 50-200 ms later. An answer with status
``offline`` while the node was beating is a false offline: the agent registers again, as a
real one does.

The run, in order: a 10-node fleet and the submission storm against it (the baseline); the
tables are wiped; the N-node fleet registers (timed), beats steadily for --duration (beats/s
answered, and the CPU of the control plane's processes over that window), takes the same
storm (placements/s, submit→running from the workloads' created_at / started_at), then 100 of
its nodes stop beating (seconds from each one's last beat sent to it seen offline, polled every
0.5 s) while the rest go on, and the console is timed (p95 of /api/nodes?limit=100 and of the
dashboard, nodes and topology pages). The last line sums it up. A figure, not a test: nothing
here asserts. Everything it starts is stopped however it ends (--max-seconds bounds the run).
Only 127.0.0.1 is spoken to. On a shared machine the figures carry the others' load.
"""

import argparse
import asyncio
import atexit
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from common import Children, pct, recreate_database  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cnet_bench_fleet")
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
ORIGIN = "fleet-bench-origin"  # CNET_LOCAL_NODE_ID, never registered: every node is in scope
DOORBELL_QUEUES = "bench.fleet.queues"  # a Redis set: the names of the fleet's node queues
# Pops every message the named queues hold, in one round trip. Celery publishes a start to the
# default exchange, so kombu pushes it on the list named after the queue, which this empties.
SWEEP = """
local out = {}
for _, queue in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local message = redis.call('RPOP', queue)
  while message do
    out[#out + 1] = message
    message = redis.call('RPOP', queue)
  end
end
return out
"""
GIB = 1024**3
CAPACITY = {"cpu": 8, "gpu": 0, "memory": 32 * GIB, "storage": 100 * GIB}
WORKLOAD = {"type": "process", "config": {"command": "true"}, "requirements": {"cpu": 0.01, "memory": 1024**2}}
USER, PASSWORD = "fleet", "fleet-bench-password"


# --- the simulated agents -------------------------------------------------------------------
@dataclass
class SimNode:
    node_id: str
    credential: str = ""
    epoch: int = 0
    interval: float = 5.0
    beating: bool = True
    registered_at: float = 0.0
    last_beat_sent: float = 0.0  # time.time() of the last beat sent
    running: dict[str, str] = field(default_factory=dict)  # workload id -> its run's scheduled_at
    fetching: bool = False
    fetch_again: bool = False


@dataclass
class Stats:
    beats_ok: int = 0
    beats_failed: int = 0
    lateness: list[float] = field(default_factory=list)  # seconds a beat was sent after it was due
    false_offline: set[str] = field(default_factory=set)
    unhealthy_answers: int = 0
    reregistered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    doorbells: int = 0
    started_by_doorbell: int = 0
    started_by_heartbeat: int = 0
    intervals: set[float] = field(default_factory=set)
    offline_after: set[float] = field(default_factory=set)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Fleet:
    """N simulated agents sharing one HTTP client (bounded concurrency) and one doorbell tap."""

    def __init__(self, *, base: str, prefix: str, count: int, join_token: str, concurrency: int) -> None:
        import httpx

        self.base = base
        self.nodes = [SimNode(f"{prefix}-{i:05d}") for i in range(count)]
        self.by_queue = {f"node.{node.node_id}": node for node in self.nodes}
        self.join_token = join_token
        self.stats = Stats()
        self.gate = asyncio.Semaphore(concurrency)
        self.client = httpx.AsyncClient(
            base_url=base, timeout=httpx.Timeout(30.0, pool=None),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.closing = False
        self.tasks: list[asyncio.Task] = []
        self.registered = 0
        self.all_registered = asyncio.Event()

    # -- HTTP -----------------------------------------------------------------------------
    async def call(self, method: str, path: str, node: SimNode | None, body=None, *, what: str):
        """One request (retried once on a dropped keep-alive connection); the response or None."""
        import httpx

        headers = {"Authorization": f"Node {node.credential}"} if node and node.credential else {}
        for attempt in range(2):
            try:
                async with self.gate:
                    return await self.client.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt:
                    self.stats.error(f"{what}: {type(exc).__name__}")
        return None

    # -- life of one agent ----------------------------------------------------------------
    async def live(self, node: SimNode) -> None:
        try:
            if not await self.join(node) or not await self.register(node):
                return
            self.registered += 1
            if self.registered == len(self.nodes):
                self.all_registered.set()
            loop = asyncio.get_running_loop()
            due = loop.time() + random.uniform(0, node.interval)  # spread the beats over the interval
            while node.beating and not self.closing:
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not node.beating or self.closing:
                    break
                self.stats.lateness.append(max(0.0, loop.time() - due))
                sent = loop.time()
                await self.beat(node)
                due = sent + node.interval  # the interval the last answer gave
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bench bug must not pass silently
            self.stats.error(f"agent loop: {exc!r}")

    async def join(self, node: SimNode) -> bool:
        response = await self.call("POST", "/api/node/join", None,
                                   {"join_token": self.join_token, "node_id": node.node_id}, what="join")
        if response is None or response.status_code != 201:
            self.stats.error(f"join: {response.status_code if response else 'no answer'}")
            return False
        node.credential = response.json()["credential"]
        return True

    async def register(self, node: SimNode) -> bool:
        body = {"node_id": node.node_id, "address": "127.0.0.1", "port": 8080, "capacity": CAPACITY,
                "parent": None, "peers": [], "labels": {"fleet": "simulated"}, "capabilities": {}}
        response = await self.call("POST", "/api/node/register", node, body, what="register")
        if response is None or response.status_code != 200:
            self.stats.error(f"register: {response.status_code if response else 'no answer'}")
            return False
        answer = response.json()
        node.epoch, node.registered_at = answer["epoch"], time.time()
        self.obey(node, answer)
        return True

    def obey(self, node: SimNode, answer: dict) -> None:
        node.interval = float(answer["heartbeat_seconds"])
        self.stats.intervals.add(node.interval)
        self.stats.offline_after.add(float(answer["offline_after_seconds"]))

    async def beat(self, node: SimNode) -> None:
        node.last_beat_sent = time.time()
        body = {"epoch": node.epoch, "usage": {"cpu": 0.1 * len(node.running)}, "running": list(node.running)}
        response = await self.call("POST", "/api/node/heartbeat", node, body, what="heartbeat")
        if response is None:
            self.stats.beats_failed += 1
            return
        if response.status_code == 409:  # another epoch: register again
            self.stats.beats_failed += 1
            self.stats.reregistered += 1
            await self.register(node)
            return
        if response.status_code != 200:
            self.stats.beats_failed += 1
            self.stats.error(f"heartbeat: {response.status_code}")
            return
        self.stats.beats_ok += 1
        answer = response.json()
        self.obey(node, answer)
        if answer["status"] == "offline":
            if node.beating:
                self.stats.false_offline.add(node.node_id)
            self.stats.reregistered += 1
            node.running.clear()  # its work was handed on
            await self.register(node)
            return
        if answer["status"] == "unhealthy":
            self.stats.unhealthy_answers += 1
        for workload_id in answer["kill"]:
            node.running.pop(workload_id, None)
        self.start(node, answer["work"], by="heartbeat")

    # -- work ----------------------------------------------------------------------------
    def start(self, node: SimNode, work: list[dict], *, by: str) -> None:
        for item in work:
            if item["status"] != "scheduled" or item["id"] in node.running:
                continue
            node.running[item["id"]] = item["scheduled_at"]
            if by == "doorbell":
                self.stats.started_by_doorbell += 1
            else:
                self.stats.started_by_heartbeat += 1
            self.spawn(self.run_workload(node, item["id"], item["scheduled_at"]))

    async def run_workload(self, node: SimNode, workload_id: str, scheduled_at: str) -> None:
        report = {"workload_id": workload_id, "epoch": node.epoch, "scheduled_at": scheduled_at}
        if not await self.report(node, {**report, "status": "running", "runtime": {"pid": 1}}):
            node.running.pop(workload_id, None)
            return
        await asyncio.sleep(random.uniform(0.05, 0.2))
        await self.report(node, {**report, "status": "succeeded", "exit_code": 0, "reason": "exited with code 0"})
        node.running.pop(workload_id, None)

    async def report(self, node: SimNode, item: dict) -> bool:
        response = await self.call("POST", "/api/node/reports", node, {"reports": [item]}, what="reports")
        if response is None or response.status_code != 200:
            self.stats.error(f"report {item['status']}: {response.status_code if response else 'no answer'}")
            return False
        return bool(response.json()["results"][0]["accepted"])

    async def fetch_work(self, node: SimNode) -> None:
        """A doorbell rang for ``node``: ask for its work (rings during a fetch coalesce into one more)."""
        if node.fetching:
            node.fetch_again = True
            return
        node.fetching = True
        try:
            while True:
                node.fetch_again = False
                response = await self.call("GET", "/api/node/work", node, what="work")
                if response is not None and response.status_code == 200:
                    self.start(node, response.json()["work"], by="doorbell")
                else:
                    self.stats.error(f"work: {response.status_code if response else 'no answer'}")
                if not node.fetch_again:
                    break
        finally:
            node.fetching = False

    # -- the doorbell tap -----------------------------------------------------------------
    def tap_doorbells(self) -> None:
        """Name the fleet's node queues in one Redis set, which the sweep script reads."""
        import redis

        client = redis.Redis.from_url(BROKER_URL)
        client.delete(DOORBELL_QUEUES)
        queues = list(self.by_queue)
        for at in range(0, len(queues), 1000):
            client.sadd(DOORBELL_QUEUES, *queues[at:at + 1000])
        client.close()

    async def doorbells(self, every: float) -> None:
        """Every ``every`` seconds, pop what the node queues hold (one script: a few ms at 10,000
        queues) and ring those nodes: each asks for its work."""
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(BROKER_URL)
        sweep = client.register_script(SWEEP)
        try:
            while not self.closing:
                for raw in await sweep(keys=[DOORBELL_QUEUES]):
                    message = json.loads(raw)
                    if message.get("headers", {}).get("task") != "workloads.start":
                        continue
                    self.stats.doorbells += 1
                    node = self.by_queue.get(message["properties"]["delivery_info"]["routing_key"])
                    if node is not None and node.beating and node.credential:
                        self.spawn(self.fetch_work(node))
                await asyncio.sleep(every)
        finally:
            await client.aclose()

    # -- running it ----------------------------------------------------------------------
    def spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        try:
            self.tasks.remove(task)
        except ValueError:
            pass

    def boot(self, doorbell_every: float) -> None:
        self.tap_doorbells()
        self.spawn(self.doorbells(doorbell_every))
        for node in self.nodes:
            self.spawn(self.live(node))

    async def close(self) -> None:
        self.closing = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()


# --- the control plane ----------------------------------------------------------------------
def setup_django(data_dir: Path) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "CNET_LOCAL_NODE_ID": ORIGIN,
        "CNET_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "cnetsite.settings",
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
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


# --- measurements ---------------------------------------------------------------------------
def submit_storm(port: int, token: str, count: int, threads: int, label: str) -> tuple[float, list[float], list[str]]:
    """POST ``count`` workloads from ``threads`` client threads; (first submit time, seconds each
    POST took to be answered, errors)."""
    import requests

    errors: list[str] = []
    answered: list[float] = []
    local = threading.local()
    body = dict(WORKLOAD)

    def submit(i: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Token {token}"
        try:
            sent = time.perf_counter()
            response = session.post(f"http://127.0.0.1:{port}/api/workloads",
                                    json={**body, "name": f"{label}-{i}"}, timeout=60)
            answered.append(time.perf_counter() - sent)
            if response.status_code != 201:
                errors.append(f"{response.status_code} {response.text[:120]}")
        except requests.RequestException as exc:
            errors.append(repr(exc))

    started = time.time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(submit, range(count)))
    return started, answered, errors


def storm_figures(first_submit: float, count: int, timeout: float) -> dict:
    """Wait until every workload started (or the timeout); placements/s and submit→running."""
    from django.db import close_old_connections

    from workloads.models import Workload

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        close_old_connections()
        if Workload.objects.filter(started_at__isnull=False).count() >= count:
            break
        time.sleep(0.25)
    close_old_connections()
    rows = list(Workload.objects.values_list("created_at", "scheduled_at", "started_at", "status"))
    scheduled = [row[1].timestamp() for row in rows if row[1]]
    running = [(row[2] - row[0]).total_seconds() for row in rows if row[2]]
    placed_in = (max(scheduled) - first_submit) if scheduled else float("nan")
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row[3]] = statuses.get(row[3], 0) + 1
    return {"placed": len(scheduled), "started": len(running), "placements_per_s": len(scheduled) / placed_in,
            "placed_in": placed_in, "p50": pct(running, 0.5), "p99": pct(running, 0.99), "statuses": statuses}


def print_storm(name: str, figures: dict, errors: list[str], fleet: Fleet) -> None:
    print(f"  {name}: {figures['placed']} placed in {figures['placed_in']:.1f} s = "
          f"{figures['placements_per_s']:.0f} placements/s; submit→running p50 {figures['p50'] * 1000:.0f} ms "
          f"p99 {figures['p99'] * 1000:.0f} ms ({figures['started']} started; statuses {figures['statuses']})")
    print(f"    POST /api/workloads answered p50 {figures['answer_p50'] * 1000:.0f} ms p99 "
          f"{figures['answer_p99'] * 1000:.0f} ms; control plane CPU {figures['cpu_ms']:.0f} ms per workload "
          f"(submit, start, two reports, and the heartbeats meanwhile)")
    print(f"    started on a doorbell {fleet.stats.started_by_doorbell}, on a heartbeat's work "
          f"{fleet.stats.started_by_heartbeat}; doorbells rung {fleet.stats.doorbells}; submit errors {len(errors)}"
          + (f" (first: {errors[0]})" if errors else ""))


async def detect(fleet: Fleet, count: int, timeout: float) -> list[float]:
    """Stop ``count`` beating nodes; seconds from each one's last beat sent to it seen offline."""
    from django.db import close_old_connections

    from nodes.models import Node

    chosen = random.Random(7).sample([node for node in fleet.nodes if node.beating and node.credential], count)
    for node in chosen:
        node.beating = False
    await asyncio.sleep(0.5)  # a beat in flight lands (its send time is the last one)
    left = {node.node_id: node for node in chosen}
    seen: list[float] = []

    def offline_now(ids: list[str]) -> list[str]:
        close_old_connections()
        return list(Node.objects.filter(node_id__in=ids, status="offline").values_list("node_id", flat=True))

    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        at = time.time()
        for node_id in await asyncio.to_thread(offline_now, list(left)):
            seen.append(at - left.pop(node_id).last_beat_sent)
        await asyncio.sleep(0.5)
    if left:
        print(f"  {len(left)} stopped nodes not seen offline within {timeout:.0f} s")
    return seen


def console_p95(port: int, token: str, requests_each: int) -> dict[str, tuple[float, float, int]]:
    """p50/p95 (ms) and status of the console pages (a staff session) and of /api/nodes?limit=100."""
    import requests

    base = f"http://127.0.0.1:{port}"
    browser = requests.Session()
    page = browser.get(f"{base}/admin/login/", timeout=30)
    csrf = browser.cookies.get("csrftoken") or re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"',
                                                         page.text).group(1)
    login = browser.post(f"{base}/admin/login/?next=/admin/", timeout=30, allow_redirects=False,
                         data={"csrfmiddlewaretoken": csrf, "username": USER, "password": PASSWORD,
                               "next": "/admin/"}, headers={"Referer": f"{base}/admin/login/"})
    if login.status_code != 302:
        raise RuntimeError(f"console login answered {login.status_code}")
    api = requests.Session()
    api.headers["Authorization"] = f"Token {token}"
    pages = {"/api/nodes?limit=100": api, "dashboard /admin/": browser, "nodes /admin/nodes/node/": browser,
             "topology /admin/nodes/node/topology/": browser}
    figures = {}
    for name, session in pages.items():
        url = base + name.split()[-1]
        times, status = [], 0
        for _ in range(requests_each):
            sent = time.perf_counter()
            response = session.get(url, timeout=60)
            times.append(time.perf_counter() - sent)
            status = response.status_code
        figures[name] = (pct(times, 0.5) * 1000, pct(times, 0.95) * 1000, status)
    return figures


def nodes_offline(prefix: str) -> set[str]:
    from django.db import close_old_connections

    from nodes.models import Node

    close_old_connections()
    return set(Node.objects.filter(node_id__startswith=prefix, status="offline").values_list("node_id", flat=True))


# --- the run --------------------------------------------------------------------------------
async def boot_fleet(args, prefix: str, count: int, join_token: str) -> tuple[Fleet, float]:
    fleet = Fleet(base=f"http://127.0.0.1:{args.port}", prefix=prefix, count=count, join_token=join_token,
                  concurrency=args.concurrency)
    started = time.monotonic()
    fleet.boot(args.doorbell_every)
    try:
        await asyncio.wait_for(fleet.all_registered.wait(), timeout=args.register_timeout)
    except TimeoutError:
        print(f"  only {fleet.registered} of {count} registered within {args.register_timeout:.0f} s")
    return fleet, time.monotonic() - started


async def storm(args, fleet: Fleet, token: str, label: str, meter: CpuMeter) -> tuple[dict, list[str]]:
    before = meter.sample()
    first, answered, errors = await asyncio.to_thread(submit_storm, args.port, token, args.submissions,
                                                      args.submit_threads, label)
    figures = await asyncio.to_thread(storm_figures, first, args.submissions, args.storm_timeout)
    after = meter.sample()
    figures["answer_p50"], figures["answer_p99"] = pct(answered, 0.5), pct(answered, 0.99)
    figures["cpu_ms"] = 1000 * (after["control plane"] - before["control plane"]) / max(1, figures["started"])
    return figures, errors


async def run(args, children: Children) -> str:
    token = await asyncio.to_thread(make_staff)
    meter = CpuMeter(children)
    print(f"fleet bench: Postgres {urlsplit(DATABASE_URL).path.lstrip('/')}, Redis {BROKER_URL}; gunicorn "
          f":{args.port} ({args.web_workers} workers x {args.web_threads} threads), control worker, beat; "
          f"{os.cpu_count()} CPUs; client concurrency {args.concurrency}")
    print(f"  work reaches the agents by the doorbell (the node queues' start messages, swept every "
          f"{args.doorbell_every * 1000:.0f} ms by one script) and by each heartbeat's work list")

    # The baseline: the same storm against a small fleet, in the same run.
    print(f"\n{args.small_nodes} nodes (baseline)")
    join_token = await asyncio.to_thread(make_join_token)
    small, took = await boot_fleet(args, "small", args.small_nodes, join_token)
    print(f"  registered {small.registered} in {took:.1f} s")
    await asyncio.sleep(2)
    base, errors = await storm(args, small, token, "small", meter)
    print_storm(f"{args.submissions} submissions", base, errors, small)
    await small.close()
    await asyncio.to_thread(wipe)

    print(f"\n{args.nodes} nodes")
    join_token = await asyncio.to_thread(make_join_token)
    fleet, took = await boot_fleet(args, "sim", args.nodes, join_token)
    print(f"  time to register all: {took:.1f} s ({fleet.registered} of {args.nodes}; join + register each,"
          f" {2 * fleet.registered / took:.0f} requests/s)")
    print(f"  heartbeat_seconds answered: {sorted(fleet.stats.intervals)}; offline_after_seconds: "
          f"{sorted(fleet.stats.offline_after)}")
    await asyncio.sleep(min(5.0, max(fleet.stats.intervals or {5.0})))  # past the first, jittered beats
    beats_before, cpu_before = fleet.stats.beats_ok, meter.sample()
    fleet.stats.lateness.clear()
    await asyncio.sleep(args.duration)
    beats, cpu_after = fleet.stats.beats_ok - beats_before, meter.sample()
    window = cpu_after["wall"] - cpu_before["wall"]
    interval = max(fleet.stats.intervals or {5.0})
    print(f"  heartbeats absorbed over {window:.0f} s steady: {beats / window:.0f}/s (asked for: "
          f"{fleet.registered / interval:.0f}/s at {interval:g} s); sent late p50 "
          f"{pct(fleet.stats.lateness, 0.5) * 1000:.0f} ms p99 {pct(fleet.stats.lateness, 0.99) * 1000:.0f} ms")
    for text in cpu_lines(cpu_before, cpu_after):
        print(text)

    big, errors = await storm(args, fleet, token, "big", meter)
    print_storm(f"{args.submissions} submissions during the heartbeats", big, errors, fleet)
    ratio = big["placements_per_s"] / base["placements_per_s"]
    print(f"  placement ratio ({args.nodes} / {args.small_nodes} nodes, placements/s): {ratio:.2f}; "
          f"submit→running p50 {big['p50'] / base['p50']:.2f}x, p99 {big['p99'] / base['p99']:.2f}x the baseline's")

    offline_after = max(fleet.stats.offline_after or {18.0})
    detected = await detect(fleet, min(args.stop_nodes, fleet.registered), timeout=3 * offline_after + 60)
    print(f"  detection of {len(detected)} stopped nodes (last beat sent → seen offline, polled every 0.5 s): "
          f"p50 {pct(detected, 0.5):.1f} s, max {max(detected or [float('nan')]):.1f} s "
          f"(offline_after_seconds {offline_after:g})")

    console = await asyncio.to_thread(console_p95, args.port, token, args.console_requests)
    for name, (p50, p95, status) in console.items():
        print(f"  {name:<38} p50 {p50:6.0f} ms  p95 {p95:6.0f} ms  (HTTP {status}, {args.console_requests} GETs)")
    worst = max(p95 for _p50, p95, _status in console.values())

    stopped = {node.node_id for node in fleet.nodes if not node.beating}
    false_offline = fleet.stats.false_offline | (await asyncio.to_thread(nodes_offline, "sim-") - stopped)
    stats = fleet.stats
    print(f"  beats answered {stats.beats_ok}, failed {stats.beats_failed}; 'unhealthy' answers "
          f"{stats.unhealthy_answers}; registered again {stats.reregistered}; errors {stats.errors or 'none'}")
    print(f"  nodes wrongly marked offline: {len(false_offline)}")
    await fleet.close()
    return (f"fleet: {args.nodes} nodes, {len(false_offline)} false offline, detect p50 {pct(detected, 0.5):.1f} s "
            f"max {max(detected or [float('nan')]):.1f} s, placement ratio {ratio:.2f}, console p95 {worst:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of steady heartbeats measured")
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--port", type=int, default=18301)
    parser.add_argument("--small-nodes", type=int, default=10, help="the baseline fleet's size")
    parser.add_argument("--stop-nodes", type=int, default=100, help="nodes that stop beating, to detect")
    parser.add_argument("--concurrency", type=int, default=32, help="node API requests in flight at most")
    parser.add_argument("--doorbell-every", type=float, default=0.05, help="seconds between doorbell sweeps")
    parser.add_argument("--submit-threads", type=int, default=4)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=8)
    parser.add_argument("--console-requests", type=int, default=30)
    parser.add_argument("--register-timeout", type=float, default=600.0)
    parser.add_argument("--storm-timeout", type=float, default=300.0)
    parser.add_argument("--max-seconds", type=int, default=1800, help="the whole run stops after this long")
    parser.add_argument("--keep-logs", help="copy the children's logs to this folder at the end")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="cnet-fleet-bench-"))
    children = Children(ROOT, data_dir)
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    if args.keep_logs:
        os.makedirs(args.keep_logs, exist_ok=True)
        atexit.register(lambda: [shutil.copy(log, args.keep_logs) for log in data_dir.glob("*.log")])
    atexit.register(flush_broker)  # the node queues' start messages, the doorbell tap, the bindings
    atexit.register(children.stop)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))  # runs the atexit hooks
    # The measured part stops at --max-seconds; the alarm is the backstop for setting up and cleaning up.
    deadline = time.monotonic() + args.max_seconds
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"fleet bench: past --max-seconds {args.max_seconds} + 60"))
    signal.alarm(args.max_seconds + 60)

    recreate_database(DATABASE_URL)
    env = setup_django(data_dir)
    start_control_plane(children, env, args.port, args.web_workers, args.web_threads)
    try:
        summary = asyncio.run(asyncio.wait_for(run(args, children), timeout=deadline - time.monotonic()))
    except TimeoutError:
        sys.exit(f"fleet bench: stopped at --max-seconds {args.max_seconds}, before the end")
    sys.stdout.flush()
    print(summary)


if __name__ == "__main__":
    main()
