"""Reports move workloads as the agent saw them (once); logs are stored once, with no gap."""

import pytest
from django.test import override_settings

from nodes.models import Node
from workloads.models import EventKind, WorkloadEvent, WorkloadLog, WorkloadStatus
from workloads.selectors import workload_log_tail

from .conftest import report_item, submit

pytestmark = pytest.mark.django_db
S = WorkloadStatus


def epoch_of(agent) -> int:
    return Node.objects.get(pk=agent.node.pk).agent_epoch


def report(agent, *reports):
    return agent.post("/api/node/reports", {"reports": list(reports)}, format="json")


def item(workload, status, agent, **extra) -> dict:
    return report_item(workload, status, epoch=epoch_of(agent), **extra)


def transitions(workload) -> list[tuple[str, str]]:
    return list(WorkloadEvent.objects.filter(workload=workload, kind=EventKind.TRANSITION).order_by("id")
                .values_list("from_status", "to_status"))


def test_reports_move_scheduled_to_running_to_succeeded_and_release_the_node(agent_for):
    agent = agent_for("a")
    work = submit("a")
    assert Node.objects.get(node_id="a").allocated()["cpu"] == 1000

    started = report(agent, item(work, "running", agent, runtime={"pid": 4242}))
    assert started.status_code == 200, started.content
    assert started.json()["results"] == [{"workload_id": str(work.pk), "accepted": True, "status": "running"}]
    work.refresh_from_db()
    assert work.status == S.RUNNING and work.runtime == {"pid": 4242} and work.agent_epoch == epoch_of(agent)

    ended = report(agent, item(work, "succeeded", agent, exit_code=0, reason="exited with code 0"))
    assert ended.json()["results"][0]["accepted"] is True
    work.refresh_from_db()
    assert (work.status, work.exit_code, work.reason) == (S.SUCCEEDED, 0, "exited with code 0")
    assert Node.objects.get(node_id="a").allocated() == {"cpu": 0, "gpu": 0, "memory": 0, "storage": 0}


def test_a_retried_batch_moves_nothing_twice(agent_for):
    agent = agent_for("a")
    work = submit("a")
    batch = [item(work, "running", agent), item(work, "failed", agent, exit_code=3)]
    assert [r["accepted"] for r in report(agent, *batch).json()["results"]] == [True, True]
    again = report(agent, *batch)
    assert again.status_code == 200 and [r["accepted"] for r in again.json()["results"]] == [False, False]
    assert transitions(work) == [("", "pending"), ("pending", "scheduled"), ("scheduled", "running"),
                                 ("running", "failed")]
    assert Node.objects.get(node_id="a").allocated()["cpu"] == 0


def test_the_restart_policy_applies_and_a_retried_batch_leaves_the_restarted_run_alone(agent_for):
    agent = agent_for("a")
    work = submit("a", restart_policy="on-failure")
    batch = [item(work, "running", agent), item(work, "failed", agent, exit_code=1)]
    assert [r["accepted"] for r in report(agent, *batch).json()["results"]] == [True, True]
    work.refresh_from_db()
    assert work.status == S.SCHEDULED and work.restart_count == 1 and work.node.node_id == "a"

    # The retry is about the run that failed: the restarted one is neither started nor ended by it.
    again = report(agent, *batch)
    assert again.status_code == 200 and [r["accepted"] for r in again.json()["results"]] == [False, False]
    work.refresh_from_db()
    assert work.status == S.SCHEDULED and work.restart_count == 1
    assert Node.objects.get(node_id="a").allocated()["cpu"] == 1000  # the new run's claim, once


def test_an_agent_may_end_only_from_the_states_it_ran(agent_for):
    agent = agent_for("a")
    work = submit("a")
    assert report(agent, item(work, "succeeded", agent, exit_code=0)).json()["results"][0]["accepted"] is False
    work.refresh_from_db()
    assert work.status == S.SCHEDULED
    assert report(agent, item(work, "failed", agent, reason="image not found")).json()["results"][0]["accepted"]
    work.refresh_from_db()
    assert (work.status, work.reason) == (S.FAILED, "image not found")


def test_a_running_report_on_running_work_stores_its_runtime(agent_for):
    agent = agent_for("a")
    work = submit("a")
    report(agent, item(work, "running", agent, runtime={"pid": 1}))
    answer = report(agent, item(work, "running", agent, runtime={"pid": 1, "limits": "cgroup"}))
    assert answer.json()["results"][0]["accepted"] is True
    work.refresh_from_db()
    assert work.runtime == {"pid": 1, "limits": "cgroup"} and work.status == S.RUNNING


def test_a_report_from_an_older_agent_than_the_one_that_started_the_run_is_not_applied(agent_for):
    agent = agent_for("a")
    work = submit("a")
    agent.post("/api/node/register", {"node_id": "a", "capacity": {"cpu": 4, "memory": 8 * 1024**3}}, format="json")
    assert report(agent, item(work, "running", agent)).json()["results"][0]["accepted"]  # epoch 2 started it
    stale = item(work, "succeeded", agent, exit_code=0) | {"epoch": epoch_of(agent) - 1}
    assert report(agent, stale).json()["results"][0]["accepted"] is False
    work.refresh_from_db()
    assert work.status == S.RUNNING


def test_a_bad_report_refuses_the_batch_naming_the_field_and_applies_nothing(agent_for):
    agent = agent_for("a")
    work = submit("a")
    answer = report(agent, item(work, "running", agent), item(work, "exploded", agent))
    assert answer.status_code == 400 and "reports.1.status" in answer.json()["detail"]
    work.refresh_from_db()
    assert work.status == S.SCHEDULED
    missing = report(agent, {"workload_id": str(work.pk), "status": "running"})
    assert missing.status_code == 400 and "epoch" in missing.json()["detail"]


def chunks(workload, seqs, stream="stdout"):
    return [{"workload_id": str(workload.pk), "seq": seq, "stream": stream, "text": f"line {seq}\n"} for seq in seqs]


def test_logs_sent_twice_are_stored_once_with_no_gap(agent_for):
    agent = agent_for("a")
    work = submit("a")
    first = agent.post("/api/node/logs", {"chunks": chunks(work, range(0, 3))}, format="json")
    assert first.status_code == 200 and first.json() == {"stored": 3}
    # A retried batch overlapping the first, then the next one.
    assert agent.post("/api/node/logs", {"chunks": chunks(work, range(0, 5))}, format="json").status_code == 200
    assert agent.post("/api/node/logs", {"chunks": chunks(work, range(0, 5))}, format="json").status_code == 200
    seqs = list(WorkloadLog.objects.filter(workload=work).order_by("seq").values_list("seq", flat=True))
    assert seqs == [0, 1, 2, 3, 4]
    assert workload_log_tail(workload=work, lines=None) == [f"line {seq}" for seq in range(5)]


def test_a_bad_chunk_stores_nothing_and_a_batch_is_capped(agent_for):
    agent = agent_for("a")
    work = submit("a")
    bad = chunks(work, [0, 1]) + [{"workload_id": str(work.pk), "seq": -1, "text": "x"}]
    answer = agent.post("/api/node/logs", {"chunks": bad}, format="json")
    assert answer.status_code == 400 and "chunks.2.seq" in answer.json()["detail"]
    too_many = agent.post("/api/node/logs", {"chunks": chunks(work, range(1001))}, format="json")
    assert too_many.status_code == 400 and "chunks" in too_many.json()
    assert not WorkloadLog.objects.filter(workload=work).exists()


def test_a_batch_over_a_mebibyte_of_text_is_refused(agent_for):
    agent = agent_for("a")
    work = submit("a")
    big = [{"workload_id": str(work.pk), "seq": seq, "text": "x" * 300_000} for seq in range(4)]
    assert agent.post("/api/node/logs", {"chunks": big}, format="json").status_code == 413  # the body limit
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=4 * 1024 * 1024):
        answer = agent.post("/api/node/logs", {"chunks": big}, format="json")
    assert answer.status_code == 400 and "chunks" in answer.json()
    assert not WorkloadLog.objects.filter(workload=work).exists()
