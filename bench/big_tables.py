"""A million workloads on Postgres: how long the lists, filters, searches, deep pages, the console's
lists and /metrics take (issue 16, point 8).

    .venv/bin/python bench/big_tables.py [--workloads 1000000] [--repeat 20] [--reuse]

Needs ``DATABASE_URL`` to a Postgres (default postgres://postgres@127.0.0.1:5432/cnet_bench_big,
dropped and created afresh unless ``--reuse`` finds it seeded with as many workloads). Seeds, with
COPY (seconds, not minutes): 100 nodes, 10 users, ``--workloads`` workloads over 30 days (a fifth
of them in arrays of 10,000), their statuses and types spread as a busy cluster's are, one event
each; then VACUUM ANALYZE. Then asks each endpoint ``--repeat`` times in this process through Django's
test client (the whole stack: middleware, auth, DRF, templates; no socket) and prints p50 and p95
in ms. A figure, not a test: nothing asserts a timing. The issue's aim: under 100 ms p95 each.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import pct, recreate_database  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/cnet_bench_big"
NODES, USERS, ARRAY_SIZE, DAYS = 100, 10, 10_000, 30
STATUSES = [("succeeded", 70), ("failed", 10), ("stopped", 5), ("running", 5), ("scheduled", 3), ("pending", 5),
            ("lost", 2)]
TYPES = [("process", 80), ("container", 15), ("mlmodel", 5)]
WORDS = ["train", "etl", "render", "sweep", "resnet", "report", "ingest", "backup", "score", "tune"]
ACTIVE = {"running", "scheduled"}
HOST = "127.0.0.1"  # one the default settings allow


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "cnetsite.settings"
    os.environ.setdefault("CNET_DATA_DIR", tempfile.mkdtemp(prefix="cnet-bench-"))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")  # a server database is not embedded
    os.environ.setdefault("CNET_THROTTLE_SUBMISSIONS", "1000000/min")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def weighted(choices: list[tuple[str, int]], rng: random.Random) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


# --- seeding ----------------------------------------------------------------------------------
def seeded_count() -> int:
    from workloads.models import Workload

    return Workload.objects.count()


def seed(total: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from nodes.resources import Resources
    from nodes.services import node_register
    from workloads.models import Workload, WorkloadArray, WorkloadEvent

    rng = random.Random(16)
    User = get_user_model()
    User.objects.create_superuser("bench-admin", password="x")
    users = [User.objects.create_user(f"user{i}", password="x") for i in range(USERS)]
    nodes = [node_register(node_id=f"node-{i}", capacity=Resources(cpu=64_000, memory=256 * 2**30,
                                                                   storage=2**40), parent=None, peers=(),
                           capabilities={"process": {"available": True}})
             for i in range(NODES)]
    now = datetime.now(UTC)
    start = now - timedelta(days=DAYS)
    arrays = []
    in_arrays = total // 5 // ARRAY_SIZE
    for a in range(in_arrays):
        arrays.append(WorkloadArray.objects.create(name=f"sweep{a}", type="process", count=ARRAY_SIZE,
                                                   owner=users[a % USERS]))
    fields = [f for f in Workload._meta.concrete_fields]
    columns = [f.column for f in fields]

    def rows():
        # Each array a block of consecutive rows, submitted at once (a microsecond apart).
        stride = total // max(len(arrays), 1)
        spread = DAYS * 86400 / total
        for i in range(total):
            block, index = divmod(i, stride)
            array = arrays[block] if block < len(arrays) and index < ARRAY_SIZE else None
            created = (start + timedelta(seconds=block * stride * spread, microseconds=index) if array
                       else start + timedelta(seconds=i * spread + rng.random() * spread))
            status = weighted(STATUSES, rng)
            index = index if array else None
            owner = array.owner if array else users[rng.randrange(USERS)]
            node = nodes[rng.randrange(NODES)] if status != "pending" else None
            name = f"{array.name}-{index}" if array else f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{i}"
            values = {
                "id": uuid.UUID(int=rng.getrandbits(128), version=4), "name": name,
                "type": array.type if array else weighted(TYPES, rng), "status": status,
                "config": json.dumps({"command": "true"}), "cpu_millicores": 100, "gpu_count": 0,
                "memory_bytes": 64 * 2**20, "storage_bytes": 0, "node_id": node.pk if node else None,
                "submitted_node_id": nodes[0].pk, "strategy": "default", "priority": 0, "owner_id": owner.pk,
                "restart_policy": "never", "max_restarts": 3, "on_disconnect": None, "restart_count": 0,
                "max_runtime_seconds": None,
                "exit_code": 0 if status == "succeeded" else (1 if status == "failed" else None), "reason": "",
                "runtime": "{}", "agent_epoch": None, "array_id": array.pk if array else None, "array_index": index,
                "dependencies_waiting": 0, "has_dependents": False, "created_at": created,
                "scheduled_at": created if status != "pending" else None, "dispatched_at": None,
                "started_at": created + timedelta(seconds=1) if status not in ("pending", "scheduled") else None,
                "finished_at": created + timedelta(seconds=30) if status not in ACTIVE | {"pending"} else None,
                "stop_requested_at": None, "updated_at": created,
            }
            yield [values[f.attname] for f in fields]

    started = time.perf_counter()
    ids = []
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg 3
        with raw.copy(f"COPY {Workload._meta.db_table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows():
                ids.append((row[0], row[columns.index("status")], row[columns.index("created_at")]))
                copy.write_row(row)
        event_columns = ["workload_id", "created_at", "kind", "from_status", "to_status", "node_id", "reason",
                         "details"]
        with raw.copy(f"COPY {WorkloadEvent._meta.db_table} ({', '.join(event_columns)}) FROM STDIN") as copy:
            for pk, status, created in ids:
                copy.write_row([pk, created, "transition", "", status, "", "seeded", "[]"])
        # As autovacuum does after a bulk load: statistics, and the visibility map that lets the
        # queue's index answer without reading the table (pending rows' queue places).
        cursor.execute("VACUUM ANALYZE")
    from workloads.services import workload_counts_fold

    workload_counts_fold()  # as the control loop's next tick would
    print(f"seeded {total:,} workloads ({in_arrays} arrays of {ARRAY_SIZE:,}) and {total:,} events in "
          f"{time.perf_counter() - started:.1f} s", flush=True)


# --- measuring --------------------------------------------------------------------------------
def timed(client, url: str, repeat: int, **headers) -> tuple[float, float, int]:
    client.get(url, **headers)  # warm: connection, caches
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = client.get(url, **headers)
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.content[:300])
    return pct(times, 0.5), pct(times, 0.95), len(response.content)


def deep_cursor(client, auth: dict, offset: int) -> str:
    """The cursor URL of the page at ``offset``: the one the page before it names (``rel="cursor"``)."""
    response = client.get(f"/api/workloads?limit=100&offset={offset - 100}", **auth)
    assert response.status_code == 200, response.content[:300]
    cursor = next(part for part in response.headers["Link"].split(", ") if part.endswith('rel="cursor"'))
    return cursor.split("<", 1)[1].split(">", 1)[0].split(HOST, 1)[1]


def measure(repeat: int) -> list[tuple[str, float, float, int]]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from workloads.models import WorkloadArray

    User = get_user_model()
    admin = User.objects.get(username="bench-admin")
    user = User.objects.get(username="user3")
    staff = {"HTTP_AUTHORIZATION": f"Token {Token.objects.get_or_create(user=admin)[0].key}"}
    own = {"HTTP_AUTHORIZATION": f"Token {Token.objects.get_or_create(user=user)[0].key}"}
    api = Client(HTTP_HOST=HOST)
    console = Client(HTTP_HOST=HOST)
    console.force_login(admin)
    array = WorkloadArray.objects.order_by("created_at").first()
    total = seeded_count()
    cases = [
        ("api first page (staff)", api, "/api/workloads", staff),
        ("api first page (a user's own)", api, "/api/workloads", own),
        ("api ?status=running", api, "/api/workloads?status=running", staff),
        ("api ?status=lost", api, "/api/workloads?status=lost", staff),
        ("api ?type=mlmodel", api, "/api/workloads?type=mlmodel", staff),
        ("api ?node=node-7", api, "/api/workloads?node=node-7", staff),
        ("api ?array=<id>", api, f"/api/workloads?array={array.pk}" if array else "/api/workloads", staff),
        ("api ?status=failed&type=container", api, "/api/workloads?status=failed&type=container", staff),
        ("api ?name= (one match)", api, f"/api/workloads?name=-{total // 2 + 1}", staff),
        ("api ?name=resnet (common)", api, "/api/workloads?name=resnet", staff),
        ("api ?offset=99000", api, "/api/workloads?offset=99000", staff),
        ("api ?offset=900000", api, f"/api/workloads?offset={min(900_000, total - 100)}", staff),
        ("api cursor at 900,000", api, deep_cursor(api, staff, min(900_000, total - 100)), staff),
        ("api /api/arrays", api, "/api/arrays", staff),
        ("console workload list", console, "/admin/workloads/workload/", {}),
        ("console ?status__exact=failed", console, "/admin/workloads/workload/?status__exact=failed", {}),
        ("console search ?q=resnet-report", console, "/admin/workloads/workload/?q=resnet-report", {}),
        ("console node list", console, "/admin/nodes/node/", {}),
        ("console dashboard", console, "/admin/", {}),
        ("/metrics", console, "/metrics", {}),
    ]
    return [(name, *timed(client, url, repeat, **headers)) for name, client, url, headers in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="keep a database already seeded with as many")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if not args.reuse:
        recreate_database(url)
    setup_django(url)
    if seeded_count() != args.workloads:
        if args.reuse and seeded_count():
            raise SystemExit(f"--reuse: the database holds {seeded_count():,} workloads, not {args.workloads:,}")
        seed(args.workloads)
    print(f"{'request':40} {'p50 ms':>8} {'p95 ms':>8} {'bytes':>9}")
    for name, p50, p95, size in measure(args.repeat):
        print(f"{name:40} {p50:8.1f} {p95:8.1f} {size:9,}{'' if p95 < 100 else '   over 100 ms'}", flush=True)


if __name__ == "__main__":
    main()
