"""A batch of reports costs a few statements, not a few per report, and moves each workload once."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from nodes.models import Node
from nodes.resources import Resources
from workloads.models import EventKind, Workload, WorkloadEvent, WorkloadStatus
from workloads.services import workload_submit

from .conftest import PROCESS, report_item

pytestmark = pytest.mark.django_db
S = WorkloadStatus


def _placed(node_id: str, count: int) -> list[Workload]:
    return [workload_submit(owner=None, name=f"w-{n}", type="process", config=PROCESS,
                            requirements=Resources(cpu=100, memory=1024**2), node=node_id) for n in range(count)]


def _queries_of(agent, reports: list[dict]) -> tuple[list[dict], int]:
    with CaptureQueriesContext(connection) as queries:
        answer = agent.post("/api/node/reports", {"reports": reports}, format="json")
    assert answer.status_code == 200, answer.content
    return answer.json()["results"], len(queries)


def _round(agent, count: int) -> tuple[int, int]:
    """``count`` workloads started, then ended, in two batches: the queries of each."""
    epoch = Node.objects.get(pk=agent.node.pk).agent_epoch
    works = _placed(agent.node.node_id, count)
    started, start_queries = _queries_of(agent, [report_item(w, "running", epoch=epoch, runtime={"pid": 1000 + n})
                                                 for n, w in enumerate(works)])
    assert all(result["accepted"] and result["status"] == "running" for result in started)
    ended, end_queries = _queries_of(agent, [report_item(w, "succeeded", epoch=epoch, exit_code=0)
                                             for w in works])
    assert all(result["accepted"] and result["status"] == "succeeded" for result in ended)
    assert {w.runtime["pid"] for w in Workload.objects.filter(pk__in=[w.pk for w in works])} == {
        1000 + n for n in range(count)}
    return start_queries, end_queries


def test_a_batch_of_starts_and_of_exits_costs_the_same_for_5_or_50(agent_for):
    agent = agent_for("a", cpu=16)
    _round(agent, 1)  # the node's first requests read what later ones find cached
    few = _round(agent, 5)
    many = _round(agent, 50)
    assert many == few, (few, many)
    assert Node.objects.get(node_id="a").allocated() == {"cpu": 0, "gpu": 0, "memory": 0, "storage": 0}
    ends = WorkloadEvent.objects.filter(kind=EventKind.TRANSITION, from_status=S.RUNNING, to_status=S.SUCCEEDED)
    assert ends.count() == 56 and set(ends.values_list("node_id", flat=True)) == {"a"}


def test_a_plain_move_and_one_that_restarts_in_one_batch_each_go_their_way(agent_for):
    agent = agent_for("a", cpu=16)
    epoch = Node.objects.get(pk=agent.node.pk).agent_epoch
    plain, restarting = _placed("a", 1)[0], workload_submit(
        owner=None, name="again", type="process", config=PROCESS, requirements=Resources(cpu=100, memory=1024**2),
        node="a", restart_policy="on-failure", max_restarts=1)
    _queries_of(agent, [report_item(w, "running", epoch=epoch) for w in (plain, restarting)])
    results, _ = _queries_of(agent, [report_item(plain, "failed", epoch=epoch, exit_code=1),
                                     report_item(restarting, "failed", epoch=epoch, exit_code=1)])
    assert [r["accepted"] for r in results] == [True, True]
    assert Workload.objects.get(pk=plain.pk).status == S.FAILED
    again = Workload.objects.get(pk=restarting.pk)  # restarted by its policy, and placed again
    assert (again.status, again.restart_count) == (S.SCHEDULED, 1)
    assert Node.objects.get(node_id="a").allocated()["cpu"] == 100  # the restart's claim alone
