"""The pending pass costs per placement, not per queued item, and never hides a smaller request."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.helpers import GiB, make_node, submit_process
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_stop, workloads_place_pending

S = WorkloadStatus


def _queries_of_a_pass_after_one_release(backlog: int) -> tuple[int, int]:
    """With ``backlog`` equal requests queued at a node of their own and room freed there for one:
    (placed, queries the pass sent)."""
    node = make_node(f"node-{backlog}", cpu=1).node_id
    filler = submit_process(cpu=1, name="filler", node=node)
    for n in range(backlog):
        submit_process(cpu=1, name=f"queued-{n}", node=node)
    workload_stop(workload=filler)
    with CaptureQueriesContext(connection) as queries:
        placed = workloads_place_pending()
    Workload.objects.filter(status=S.PENDING).delete()  # the next round's queue is its own
    return placed, len(queries)


@pytest.mark.django_db
def test_a_release_costs_the_same_whatever_the_length_of_the_queue():
    placed_short, short = _queries_of_a_pass_after_one_release(10)
    placed_long, long = _queries_of_a_pass_after_one_release(60)
    assert placed_short == placed_long == 1
    # One placement, one request that finds no room (its equals are not tried again), a few reads.
    assert long == short, (short, long)
    assert long < 30


@pytest.mark.django_db
def test_requests_no_smaller_than_one_without_room_are_skipped_and_a_smaller_one_is_placed():
    make_node("local", cpu=4, memory=4 * GiB)
    make_node("child", cpu=4, memory=4 * GiB, parent="local")
    submit_process(cpu=3, memory=GiB, name="fill-local")
    spare_local = submit_process(cpu=1, memory=3 * GiB, name="spare-local")
    submit_process(cpu=1, memory=3 * GiB, name="fill-child")
    spare_child = submit_process(cpu=3, memory=GiB, name="spare-child")
    big = [submit_process(cpu=2, memory=2 * GiB, name=f"big-{n}", priority=5) for n in range(2)]
    small = submit_process(cpu=1, memory=GiB, name="small")
    assert {w.status for w in [*big, small]} == {S.PENDING}
    workload_stop(workload=spare_local)  # local: 1 CPU, 3 GiB free; child: none
    workload_stop(workload=spare_child)  # child: 3 CPU, 1 GiB free: no node has 2 CPU and 2 GiB
    # Two tries: the first big one (no room), then not its equal, but the small one behind it.
    assert workloads_place_pending(limit=2) == 1
    assert Workload.objects.get(pk=small.pk).status == S.SCHEDULED
    assert [Workload.objects.get(pk=w.pk).status for w in big] == [S.PENDING, S.PENDING]
