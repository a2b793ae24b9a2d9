"""Invariant 1, proven: concurrent submissions never oversubscribe a node (SQLite and Postgres)."""

import random
import threading
import traceback
from collections import defaultdict

import pytest
from django.db import connection
from django.db.models import Sum

from nodes.models import RESOURCES, Node
from nodes.resources import Resources
from tests.helpers import GiB, make_node
from workloads.models import ACTIVE, Workload, WorkloadStatus
from workloads.services import workload_stop, workload_submit

THREADS = 8
PER_THREAD = 30  # 240 submissions in all
MiB = 1024**2


@pytest.mark.django_db(transaction=True)
def test_concurrent_submissions_never_oversubscribe_and_leave_every_workload_explained(django_user_model):
    owner = django_user_model.objects.create_user("load", password="pw")
    make_node("local", cpu=2, memory=2 * GiB)
    make_node("child-1", parent="local", cpu=2, memory=2 * GiB)
    make_node("peer-1", peers=("local",), cpu=1, memory=3 * GiB)
    barrier = threading.Barrier(THREADS)
    errors: list[str] = []
    stopped: list = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        mine = []
        try:
            barrier.wait()
            for i in range(PER_THREAD):
                workload = workload_submit(
                    owner=owner, name=f"t{seed}-{i}", type="process", config={"command": "true"},
                    strategy=rng.choice(["default", "best_fit"]),
                    requirements=Resources(cpu=rng.choice([100, 250, 500, 1000]),
                                           memory=rng.choice([64, 128, 256, 512]) * MiB),
                )
                mine.append(workload)
                if i % 6 == 5:  # releases interleave with claims
                    victim = Workload.objects.get(pk=rng.choice(mine).pk)
                    if victim.status in (WorkloadStatus.PENDING, WorkloadStatus.SCHEDULED):
                        stopped.append(workload_stop(workload=victim).pk)
        except BaseException as error:  # reported by the main thread
            errors.append("".join(traceback.format_exception(error)))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    assert Workload.objects.count() == THREADS * PER_THREAD
    placed = defaultdict(lambda: Resources())
    for node_pk, *amounts in Workload.objects.filter(status__in=ACTIVE).values_list(
        "node", "cpu_millicores", "gpu_count", "memory_bytes", "storage_bytes"
    ):
        held = placed[node_pk]
        placed[node_pk] = Resources(*(a + b for a, b in zip(held.as_dict().values(), amounts, strict=True)))
    for node in Node.objects.all():
        assert node.allocated() == placed[node.pk].as_dict(), node.node_id
        for name, (capacity, allocated) in RESOURCES.items():
            assert getattr(node, allocated) <= getattr(node, capacity), (node.node_id, name)
    assert sum(r.cpu for r in placed.values()) > 0  # something was placed, on more than one node
    assert len([pk for pk in placed if pk]) >= 2

    statuses = set(Workload.objects.values_list("status", flat=True).distinct())
    assert statuses <= {WorkloadStatus.SCHEDULED, WorkloadStatus.PENDING, WorkloadStatus.STOPPED}
    assert Workload.objects.filter(status=WorkloadStatus.STOPPED).count() == len(set(stopped))
    pending = Workload.objects.filter(status=WorkloadStatus.PENDING)
    assert pending.exists()  # the nodes are small: some work had to wait
    assert not pending.filter(reason="").exists()
    assert not pending.exclude(reason__startswith="no node fits now").exists()
    assert Workload.objects.filter(status__in=ACTIVE, node__isnull=True).count() == 0
    assert Workload.objects.filter(status__in=ACTIVE).aggregate(n=Sum("cpu_millicores"))["n"] == sum(
        n.cpu_allocated_millicores for n in Node.objects.all()
    )
