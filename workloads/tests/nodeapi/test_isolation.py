"""A node credential acts for its own node only: another node's workloads get 403, nothing applied."""

import pytest

from nodes.models import Node
from workloads.models import Workload, WorkloadLog, WorkloadStatus

from .conftest import report_item, submit

pytestmark = pytest.mark.django_db
S = WorkloadStatus


@pytest.fixture
def two(agent_for):
    """Nodes a and b, each with its agent, and one scheduled workload on each."""
    a, b = agent_for("a"), agent_for("b")
    return a, b, submit("a", name="on-a"), submit("b", name="on-b")


def epoch(node_id: str) -> int:
    return Node.objects.get(node_id=node_id).agent_epoch


def test_reports_for_another_nodes_workload_are_refused_whole(two):
    a, _b, mine, theirs = two
    answer = a.post("/api/node/reports", {"reports": [
        report_item(mine, "running", epoch=epoch("a")), report_item(theirs, "running", epoch=epoch("a")),
    ]}, format="json")
    assert answer.status_code == 403 and str(theirs.pk) in answer.json()["detail"]
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.status == S.SCHEDULED and theirs.status == S.SCHEDULED  # not even a's own report


def test_a_report_that_could_end_another_nodes_running_work_is_refused(two):
    a, b, _mine, theirs = two
    b.post("/api/node/reports", {"reports": [report_item(theirs, "running", epoch=epoch("b"))]}, format="json")
    answer = a.post("/api/node/reports", {"reports": [report_item(theirs, "failed", epoch=epoch("a"))]},
                    format="json")
    assert answer.status_code == 403
    theirs.refresh_from_db()
    assert theirs.status == S.RUNNING
    assert Node.objects.get(node_id="b").allocated()["cpu"] == 1000


def test_logs_for_another_nodes_workload_are_refused_and_nothing_is_stored(two):
    a, _b, mine, theirs = two
    answer = a.post("/api/node/logs", {"chunks": [
        {"workload_id": str(mine.pk), "seq": 0, "stream": "stdout", "text": "mine\n"},
        {"workload_id": str(theirs.pk), "seq": 0, "stream": "stdout", "text": "forged\n"},
    ]}, format="json")
    assert answer.status_code == 403
    assert not WorkloadLog.objects.exists()


def test_work_and_heartbeat_answer_only_for_the_credentials_node(two):
    a, _b, mine, theirs = two
    b_before = Node.objects.get(node_id="b")
    work = a.get("/api/node/work").json()
    assert [w["id"] for w in work["work"]] == [str(mine.pk)]
    beat = a.post("/api/node/heartbeat", {"epoch": epoch("a"), "usage": {}, "running": [str(theirs.pk)]},
                  format="json").json()
    # b's workload is not a's to run: if a runs a copy, it must die; its details are not given.
    assert beat["kill"] == [str(theirs.pk)] and [w["id"] for w in beat["work"]] == [str(mine.pk)]
    b_after = Node.objects.get(node_id="b")
    assert (b_after.last_heartbeat, b_after.usage) == (b_before.last_heartbeat, b_before.usage)


def test_a_heartbeat_or_work_request_cannot_name_another_node(two):
    a, *_ = two
    answer = a.post("/api/node/heartbeat", {"epoch": epoch("a"), "node_id": "b"}, format="json")
    assert answer.status_code == 400 and "node_id" in answer.json()
    named = a.get("/api/node/work?node=b")
    assert named.status_code == 400 and "node" in named.json()
    assert [w["name"] for w in a.get("/api/node/work").json()["work"]] == ["on-a"]


def test_work_comes_a_batch_at_a_time_in_placement_order_saying_when_more_wait(two):
    a, *_ = two
    for i in range(3):  # placed after "on-a"; a has room for all four
        submit("a", name=f"more-{i}")
    everything = a.get("/api/node/work").json()
    batch = a.get("/api/node/work?status=scheduled&limit=2").json()
    assert [w["id"] for w in batch["work"]] == [w["id"] for w in everything["work"]][:2]
    assert batch["more"] is True and batch["running"] == []
    assert len(everything["work"]) == 4 and everything["more"] is False
    assert a.get("/api/node/work?status=scheduled&limit=4").json()["more"] is False
    refused = a.get("/api/node/work?limit=0")
    assert refused.status_code == 400 and "limit" in refused.json()


def test_another_nodes_epoch_does_not_let_a_beat_for_it(two):
    a, *_ = two
    Node.objects.filter(node_id="b").update(agent_epoch=41)
    answer = a.post("/api/node/heartbeat", {"epoch": 41}, format="json")
    assert answer.status_code == 409


def test_the_last_node_of_a_restarted_workload_may_still_send_its_last_run_but_no_other_may(two):
    a, b, mine, _theirs = two
    Workload.objects.filter(pk=mine.pk).update(restart_policy="on-failure")
    run = [report_item(mine, "running", epoch=epoch("a")), report_item(mine, "failed", epoch=epoch("a"), exit_code=1)]
    Node.objects.filter(node_id__in=["a", "b"]).update(status="draining")  # the restart finds no room
    assert a.post("/api/node/reports", {"reports": run}, format="json").status_code == 200
    mine.refresh_from_db()
    assert mine.status == S.PENDING and mine.node is None

    late = {"chunks": [{"workload_id": str(mine.pk), "seq": 0, "stream": "stderr", "text": "last words\n"}]}
    assert b.post("/api/node/logs", late, format="json").status_code == 403
    assert a.post("/api/node/logs", late, format="json").json() == {"stored": 1}
    retried = a.post("/api/node/reports", {"reports": run}, format="json")
    assert retried.status_code == 200 and [r["accepted"] for r in retried.json()["results"]] == [False, False]
    assert b.post("/api/node/reports", {"reports": run}, format="json").status_code == 403
