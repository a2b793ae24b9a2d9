"""The CPU one heartbeat costs the control plane, in process: the whole Django stack, no network.

    .venv/bin/python bench/fleet_heartbeat_cost.py [--nodes 200] [--beats 3000] [--profile 25]

What bench/fleet.py's control plane spends per beat, without the simulator's share or the
kernel's: a request through the WSGI handler and every middleware, as gunicorn hands it over.
Needs Postgres (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/cnet_bench_heartbeat,
dropped and created anew). ``--nodes`` join and register; then ``--beats`` heartbeats go round
them, each with the body an idle agent sends. Prints CPU and wall time per beat (p50, mean), the
statements each beat sent, and with ``--profile N`` the N functions that took the most of it.
"""

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from common import django_migrated, pct, recreate_database  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cnet_bench_heartbeat")
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--beats", type=int, default=3000)
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions")
    args = parser.parse_args()

    recreate_database(DATABASE_URL)
    django_migrated(root=ROOT, database_url=DATABASE_URL, broker_url=BROKER_URL, local_node_id="cost-origin",
                    data_dir=Path(tempfile.mkdtemp(prefix="cnet-heartbeat-cost-")))
    from django.db import connection
    from django.test import Client, override_settings

    from nodes.services import join_token_create

    token = join_token_create(ttl_seconds=3600, uses=None)
    client = Client(HTTP_HOST="127.0.0.1")  # one handler, as a gunicorn worker has
    costs = {"join": [], "register": [], "refused register": []}

    def timed(kind: str, path: str, body: str, credential: str = ""):
        started_cpu = time.process_time()
        answer = client.post(path, body, content_type="application/json",
                             headers={"Authorization": f"Node {credential}"} if credential else {})
        costs[kind].append(time.process_time() - started_cpu)
        return answer

    nodes = []
    for i in range(args.nodes):
        node_id = f"cost-{i:05d}"
        joined = timed("join", "/api/node/join", json.dumps({"join_token": token, "node_id": node_id}))
        if joined.status_code != 201:
            sys.exit(f"join {node_id}: {joined.status_code} {joined.content[:200]!r}")
        credential = joined.json()["credential"]
        body = json.dumps({"node_id": node_id, "address": "127.0.0.1", "port": 8080,
                           "capacity": {"cpu": 8, "gpu": 0, "memory": 32 * 2**30, "storage": 100 * 2**30}})
        with override_settings(CNET_NODE_REGISTRATIONS_IN_FLIGHT=0):  # every slot taken: refused
            timed("refused register", "/api/node/register", body, credential)
        answer = timed("register", "/api/node/register", body, credential)
        if answer.status_code != 200:
            sys.exit(f"register {node_id}: {answer.status_code} {answer.content[:200]!r}")
        nodes.append((credential, json.dumps({"epoch": answer.json()["epoch"], "usage": {"cpu": 0.1}, "running": []})))
    for kind, cpu in costs.items():
        print(f"{kind} cost over {len(cpu)} nodes: CPU p50 {pct(cpu, 0.5) * 1000:.2f} ms "
              f"mean {sum(cpu) / len(cpu) * 1000:.2f} ms")

    def beat(i: int) -> None:
        credential, body = nodes[i % len(nodes)]
        answer = client.post("/api/node/heartbeat", body, content_type="application/json",
                             headers={"Authorization": f"Node {credential}"})
        if answer.status_code != 200:
            sys.exit(f"heartbeat: {answer.status_code} {answer.content[:200]!r}")

    for i in range(min(args.beats, 200)):  # warm: connections, prepared statements, caches
        beat(i)
    queries: list[str] = []

    def capture(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        beat(0)
    cpu, wall = [], []
    for i in range(args.beats):
        started_cpu, started = time.process_time(), time.perf_counter()
        beat(i)
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    print(f"heartbeat cost over {args.beats} beats of {args.nodes} nodes ({connection.vendor}): CPU p50 "
          f"{pct(cpu, 0.5) * 1000:.2f} ms mean {sum(cpu) / len(cpu) * 1000:.2f} ms; wall p50 "
          f"{pct(wall, 0.5) * 1000:.2f} ms mean {sum(wall) / len(wall) * 1000:.2f} ms")
    print(f"  statements a beat sent: {len(queries)}")
    for sql in queries:
        print(f"    {sql[:160]}")
    if args.profile:
        profile = cProfile.Profile(time.process_time)  # CPU, as the figures above
        profile.enable()
        for i in range(args.beats):
            beat(i)
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
