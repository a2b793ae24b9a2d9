"""Placement throughput: ``scheduler.placement.place()`` at 100 and 10,000 nodes on Postgres.

    .venv/bin/python bench/placement.py [--placements 10000] [--sizes 100,10000]
    .venv/bin/python bench/placement.py --batch [--array 1000] [--placements 10000]

Needs ``DATABASE_URL`` to a Postgres (default postgres://postgres@127.0.0.1:5432/cnet_bench,
created if missing; its tables are wiped). Prints placements/s for each strategy and size,
and the raw ceiling measured in the same run: a bare transaction that claims one node row
with a conditional UPDATE and inserts one row, on one connection. Each placement is one
transaction too: ``place()`` plus one inserted row recording the decision, as the real path
records it. Both send their statements as ``place()`` does (``nodes.db.prepared_cursor``:
prepared once per connection on Postgres), so the comparison is like for like. Placements
accumulate (nothing is released); capacities are sized so that all of them fit even at 100
nodes. A figure, not a test: nothing here asserts a timing.

``--batch``: arrays instead (issue 16): ``--placements`` instances in arrays of ``--array``, each
array one transaction: ``place_batch()`` (one conditional UPDATE per node it fills) plus one row
recording the batch's decision, as an array's event records it; then the same through
``workload_array_place()`` itself, which also moves each node's share of real pending instances
to scheduled (one UPDATE per node) with their transition events (one INSERT). Against the same
ceiling, one placement per commit; aims: >= 10,000 instances/s and >= 5x that ceiling.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from common import ensure_database  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/cnet_bench"

CORE, GIB, MIB = 1000, 1024**3, 1024**2
# 10,000 requests of 0.1 CPU / 128 MiB need 1,000 cores and 1.25 TiB; the smallest node holds
# 160 of them, so 100 nodes hold at least 16,000 and nothing has to be released.
REQUEST = {"cpu": 100, "memory": 128 * MIB}
NODE_CPU = (16 * CORE, 32 * CORE, 64 * CORE)
NODE_MEMORY = (64 * GIB, 128 * GIB, 256 * GIB)
ROOTS = 5  # the local tree plus four peer trees
TREE_DEPTH = 3  # levels below each root
RECORD_TABLE = "bench_placement_record"


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cnetsite.settings")
    os.environ.setdefault("CNET_DATA_DIR", tempfile.mkdtemp(prefix="cnet-bench-"))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")  # a server database is not embedded
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


# --- the cluster ----------------------------------------------------------------------------
def tree_sizes(total: int) -> list[int]:
    """Node counts per tree: the local tree takes most, four peer trees share the rest."""
    local = total - (ROOTS - 1) * (total // (ROOTS * 2))
    return [local] + [total // (ROOTS * 2)] * (ROOTS - 1)


def build_cluster(total: int, rng: random.Random) -> dict:
    """``total`` nodes in bulk: trees of depth 3 with paths as node_set_parent writes them,
    the local root peered with the peer roots, and a few random peer links besides."""
    from django.db import connection

    from nodes.models import Node

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE nodes_node RESTART IDENTITY CASCADE")
    nodes: list[Node] = []
    roots = []
    next_pk = 1
    for tree, size in enumerate(tree_sizes(total)):
        fanout = 1
        while sum(fanout**level for level in range(TREE_DEPTH + 1)) < size:
            fanout += 1
        root_path = f"/{next_pk}/"
        level = [(next_pk, root_path)]
        roots.append(next_pk)
        nodes.append(_node(next_pk, f"t{tree}", None, root_path, rng))
        next_pk += 1
        made = 1
        # Breadth first, so the tree is as shallow as its size allows (depth <= 3).
        while made < size:
            below = []
            for parent_pk, parent_path in level:
                for _child in range(fanout):
                    if made >= size:
                        break
                    path = f"{parent_path}{next_pk}/"
                    name = f"t{tree}-{next_pk}"
                    nodes.append(_node(next_pk, name, parent_pk, path, rng))
                    below.append((next_pk, path))
                    next_pk += 1
                    made += 1
            level = below
    Node.objects.bulk_create(nodes, batch_size=2000)
    peers = Node.peers.through
    links = {(roots[0], peer) for peer in roots[1:]}
    for _ in range(max(1, total // 100)):
        a, b = rng.sample(range(1, total + 1), 2)
        links.add((a, b))
    rows = []
    for a, b in links:
        rows += [peers(from_node_id=a, to_node_id=b), peers(from_node_id=b, to_node_id=a)]
    peers.objects.bulk_create(rows, ignore_conflicts=True, batch_size=2000)
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('nodes_node', 'id'), %s)", [total])
        cursor.execute("VACUUM ANALYZE nodes_node")
    depth = max(node.depth for node in nodes)
    return {"local": "t0", "roots": len(roots), "peer_links": len(links), "max_depth": depth}


def _node(pk: int, node_id: str, parent_pk: int | None, path: str, rng: random.Random):
    from nodes.models import Node

    return Node(
        pk=pk, node_id=node_id, parent_id=parent_pk, path=path, depth=path.count("/") - 2,
        cpu_millicores=rng.choice(NODE_CPU), memory_bytes=rng.choice(NODE_MEMORY),
        storage_bytes=1024 * GIB, status="ready",
    )


def reset_allocations() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE nodes_node SET cpu_allocated_millicores = 0, gpu_allocated = 0,"
            " memory_allocated_bytes = 0, storage_allocated_bytes = 0"
        )
        cursor.execute(f"TRUNCATE {RECORD_TABLE}")
        cursor.execute("VACUUM ANALYZE nodes_node")


def create_record_table() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {RECORD_TABLE} "
            "(id bigserial PRIMARY KEY, node_id bigint, reason text NOT NULL, details jsonb)"
        )


# --- the measurements -----------------------------------------------------------------------
def run_ceiling(count: int, size: int) -> float:
    """The raw path: claim one node row with a conditional UPDATE, insert one row, commit.

    The rows are taken in turn, so every claim fits (each node holds at least 160)."""
    from django.db import transaction

    from nodes.db import prepared_cursor

    reset_allocations()
    cpu, memory = REQUEST["cpu"], REQUEST["memory"]
    missed = 0
    started = time.perf_counter()
    for i in range(count):
        pk = i % size + 1
        with transaction.atomic(), prepared_cursor() as cursor:
            cursor.execute(
                "UPDATE nodes_node SET cpu_allocated_millicores = cpu_allocated_millicores + %s,"
                " memory_allocated_bytes = memory_allocated_bytes + %s"
                " WHERE id = %s AND status = %s"
                " AND cpu_allocated_millicores <= cpu_millicores - %s"
                " AND memory_allocated_bytes <= memory_bytes - %s",
                [cpu, memory, pk, "ready", cpu, memory],
            )
            missed += cursor.rowcount != 1
            record(cursor, pk, "ceiling", "[]")
    rate = count / (time.perf_counter() - started)
    if missed:
        print(f"  (ceiling: {missed} claims did not fit)")
    return rate


def record(cursor, node_pk: int | None, reason: str, details: str) -> None:
    """The one row each transaction inserts, as the real path records its decision."""
    cursor.execute(f"INSERT INTO {RECORD_TABLE} (node_id, reason, details) VALUES (%s, %s, %s)",
                   [node_pk, reason, details])


def run_place(count: int, strategy_name: str) -> tuple[float, dict]:
    from django.db import transaction

    from nodes.db import prepared_cursor
    from nodes.resources import Resources
    from scheduler.placement import place
    from scheduler.strategies import strategy_get

    reset_allocations()
    requirements = Resources(**REQUEST)
    strategy = strategy_get(strategy_name)
    placed_on: dict[str, int] = {}
    unplaced = 0
    started = time.perf_counter()
    for _ in range(count):
        with transaction.atomic():
            decision = place(requirements=requirements, local_node_id="t0", strategy=strategy)
            with prepared_cursor() as cursor:
                record(cursor, decision.node.pk if decision.node else None, decision.summary(),
                       json.dumps(decision.reasons))
        if decision.placed:
            placed_on[decision.node.node_id] = placed_on.get(decision.node.node_id, 0) + 1
        else:
            unplaced += 1
    rate = count / (time.perf_counter() - started)
    return rate, {"nodes_used": len(placed_on), "unplaced": unplaced}


def run_batches(count: int, array: int, strategy_name: str) -> float:
    """``count`` instances placed by ``place_batch``, ``array`` per transaction; instances/s."""
    from django.db import transaction

    from nodes.db import prepared_cursor
    from nodes.resources import Resources
    from scheduler.placement import place_batch
    from scheduler.strategies import strategy_get

    reset_allocations()
    requirements, strategy = Resources(**REQUEST), strategy_get(strategy_name)
    placed = 0
    started = time.perf_counter()
    for _ in range(count // array):
        with transaction.atomic():
            decision = place_batch(requirements=requirements, count=array, local_node_id="t0", strategy=strategy)
            with prepared_cursor() as cursor:
                record(cursor, None, decision.summary(), json.dumps(decision.reasons))
        placed += decision.placed
    rate = placed / (time.perf_counter() - started)
    if placed != count // array * array:
        print(f"  ({count // array * array - placed} instances not placed)")
    return rate


def run_array_place(count: int, array: int) -> float:
    """``count`` real pending instances, in arrays of ``array``, placed by ``workload_array_place``
    (the arrays are made first, untimed); instances/s."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from workloads.models import Workload, WorkloadArray
    from workloads.services import workload_array_place

    reset_allocations()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE workloads_workload, workloads_workloadarray CASCADE")
    owner, _ = get_user_model().objects.get_or_create(username="bench-placement")
    arrays = []
    for a in range(count // array):
        made = WorkloadArray.objects.create(name=f"bench-{a}", type="process", count=array, owner=owner)
        Workload.objects.bulk_create([
            Workload(owner=owner, name=f"bench-{a}-{i}", type="process", config={"command": "true"}, array=made,
                     array_index=i, cpu_millicores=REQUEST["cpu"], memory_bytes=REQUEST["memory"])
            for i in range(array)], batch_size=2000)
        arrays.append(made.pk)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE workloads_workload")
    started = time.perf_counter()
    placed = sum(workload_array_place(array_id=array_id) for array_id in arrays)
    return placed / (time.perf_counter() - started)


def main_batch(args, sizes: list[int]) -> None:
    count, array = args.placements, args.array
    print(f"batch placement bench: {count} instances of {REQUEST['cpu'] / CORE:g} CPU / {REQUEST['memory'] // MIB} MiB "
          f"in arrays of {array}, each array one transaction, submitted at 't0'")
    for size in sizes:
        info = build_cluster(size, random.Random(size))
        print(f"\n{size} nodes: {info['roots']} trees of depth <= {info['max_depth']}, {info['peer_links']} peer links")
        ceiling = run_ceiling(count, size)
        print(f"  ceiling (one placement per commit: UPDATE one node row + INSERT one row): {ceiling:8.0f} /s")
        for name in args.strategies.split(","):
            rate = run_batches(count, array, name)
            print(f"  place_batch() {name:<9} {rate:9.0f} instances/s  {rate / ceiling:5.1f}x the ceiling  "
                  f"aims >= 10,000/s {'met' if rate >= 10_000 else 'NOT met'}, >= 5x "
                  f"{'met' if rate >= 5 * ceiling else 'NOT met'}", flush=True)
        rate = run_array_place(count, array)
        print(f"  workload_array_place() (rows moved + events) {rate:9.0f} instances/s  {rate / ceiling:5.1f}x the "
              f"ceiling  aims >= 10,000/s {'met' if rate >= 10_000 else 'NOT met'}, >= 5x "
              f"{'met' if rate >= 5 * ceiling else 'NOT met'}", flush=True)


def queries_of_one_place(strategy_name: str) -> list[tuple[str, list | None]]:
    """The SQL one placement sends once its origin is known (run in rolled-back transactions)."""
    from django.db import connection, transaction

    from nodes.resources import Resources
    from scheduler.placement import place
    from scheduler.strategies import strategy_get

    seen = []

    def record(execute, sql, params, many, context):
        seen.append((sql, params))  # None for a statement with its values written in
        return execute(sql, params, many, context)

    for _placement in range(2):  # the first one reads the origin and compiles the statements
        seen.clear()
        with connection.execute_wrapper(record), transaction.atomic():
            place(requirements=Resources(**REQUEST), local_node_id="t0", strategy=strategy_get(strategy_name))
            transaction.set_rollback(True)
    return seen


def explain(sql: str, params: list | None) -> str:
    from django.db import connection, transaction

    # ANALYZE runs the statement: roll back, so an UPDATE claims nothing.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + sql, params)
        plan = "\n".join("      " + row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--placements", type=int, default=10_000)
    parser.add_argument("--sizes", default="100,10000", help="node counts, comma separated")
    parser.add_argument("--strategies", default="default,best_fit")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each query")
    parser.add_argument("--batch", action="store_true", help="arrays: instances/s of batch placement")
    parser.add_argument("--array", type=int, default=1000, help="instances per array with --batch")
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("bench/placement.py measures Postgres: set DATABASE_URL=postgres://...")
    ensure_database(url)
    setup_django(url)
    create_record_table()
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.batch:
        main_batch(args, sizes)
        return
    strategies = args.strategies.split(",")
    count = args.placements
    print(f"placement bench: {count} placements of {REQUEST['cpu'] / CORE:g} CPU / "
          f"{REQUEST['memory'] // MIB} MiB per run, submitted at the local root 't0' (its scope is "
          f"every tree); placements accumulate, none is released (capacity fits them all)")
    print(f"database: {urlsplit(url)._replace(netloc=urlsplit(url).hostname or '').geturl()}")

    results: dict[tuple[int, str], float] = {}
    ceilings = []
    for size in sizes:
        info = build_cluster(size, random.Random(size))
        print(f"\n{size} nodes: {info['roots']} trees of depth <= {info['max_depth']}, "
              f"{info['peer_links']} peer links")
        ceiling = run_ceiling(count, size)
        ceilings.append(ceiling)
        print(f"  ceiling (UPDATE one node row + INSERT one row, one transaction): {ceiling:8.0f} /s")
        for name in strategies:
            queries = queries_of_one_place(name)
            rate, info = run_place(count, name)
            results[size, name] = rate
            print(f"  place() {name:<9} {rate:8.0f} placements/s   {rate / ceiling:6.1%} of ceiling   "
                  f"{len(queries)} queries/placement (+1 insert), {info['nodes_used']} nodes used, "
                  f"{info['unplaced']} unplaced")
            if args.explain:
                for sql, params in queries:
                    print(f"    {sql[:160]}{'...' if len(sql) > 160 else ''}")
                    print(explain(sql, params))
    print("\nsummary")
    ceiling = sum(ceilings) / len(ceilings)
    print(f"  ceiling (mean of {len(ceilings)} runs): {ceiling:.0f} /s")
    for name in strategies:
        rates = [results[size, name] for size in sizes]
        line = "  ".join(f"{size} nodes {rate:.0f}/s ({rate / ceiling:.0%} of ceiling)"
                         for size, rate in zip(sizes, rates, strict=True))
        scale = f"  {sizes[-1]}-vs-{sizes[0]} ratio {rates[-1] / rates[0]:.2f}" if len(sizes) > 1 else ""
        print(f"  {name:<9} {line}{scale}")
    print("  aims: >= 50% of the ceiling; largest-vs-smallest ratio >= 0.50")


if __name__ == "__main__":
    main()
