"""A fleet simulator: N simulated agents in one process against a real control plane.

    .venv/bin/python bench/fleet.py --nodes 1000 [--duration 30] [--submissions 2000]

The idea of Kubernetes' KWOK and Nomad's node simulators. Needs Postgres and Redis (defaults:
postgres://postgres@127.0.0.1:5432/cnet_bench_fleet, dropped and created anew, and
redis://127.0.0.1:6379/9, flushed). Starts, as children in their own process groups, the
control plane as ``manage.py up`` runs it: gunicorn (``cnetsite.wsgi`` on 127.0.0.1:--port),
the control worker (``-Q control``, solo pool) and beat. The local node the submissions name
(``CNET_LOCAL_NODE_ID``) is not registered, so every node of the fleet is in their scope.

Each simulated agent speaks the real node API over keep-alive connections (asyncio, one client
of --concurrency connections, so that many requests at most in flight; bench/fleet_http.py): it
joins with one join token, registers (8 cores, 32 GiB), then beats at a random point of its
first interval and afterwards at the interval each answer gives (``heartbeat_seconds``; the
control plane may grow it with the fleet). Work reaches it two ways, as the issue has it: the
heartbeat's ``work`` list, and the doorbell. N Celery consumers do not fit in one process, so
the doorbell is read another way: Celery pushes each start message on the Redis list named
after the node's queue, Redis announces the push on that key's keyspace channel, and the
simulator pops that list (O(1) for Redis per message, as an agent's own BRPOP); a ring makes
that node ``GET /api/node/work``, as an agent does on a start message. A started workload is
reported ``running``, then ``succeeded`` (exit code 0) 50-200 ms later. An answer with status
``offline`` while the node was beating is a false offline: the agent registers again, as a real
one does.

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
from pathlib import Path
from urllib.parse import urlsplit

from common import Children, pct, recreate_database  # bench/ is on sys.path when run as a script
from fleet_agents import BROKER_URL, Fleet
from fleet_plane import (
    DATABASE_URL,
    PASSWORD,
    ROOT,
    USER,
    WORKLOAD,
    CpuMeter,
    cpu_lines,
    flush_broker,
    make_join_token,
    make_staff,
    setup_django,
    start_control_plane,
    wipe,
)


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
    await fleet.boot()
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
    print("  work reaches the agents by the doorbell (each node queue's start messages, popped as Redis "
          "announces the push) and by each heartbeat's work list")

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
          f"{stats.unhealthy_answers}; registered again {stats.reregistered}; joins and registrations deferred "
          f"(503) {stats.registrations_deferred}; errors {stats.errors or 'none'}")
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
