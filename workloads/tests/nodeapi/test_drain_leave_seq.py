"""The work answer says where a rerun's log numbering goes on; drain and leave end an agent's run."""

import pytest

from nodes.models import Node, NodeStatus
from workloads.models import Workload, WorkloadLog, WorkloadStatus

from .conftest import submit

pytestmark = pytest.mark.django_db
S = WorkloadStatus


def epoch(agent) -> int:
    return Node.objects.get(pk=agent.node.pk).agent_epoch


def test_work_carries_the_next_log_number_and_the_owner(agent_for, user):
    agent = agent_for("a")
    fresh, rerun = submit("a", name="fresh"), submit("a", name="rerun", owner=user)
    WorkloadLog.objects.bulk_create(WorkloadLog(workload=rerun, seq=seq, text="x\n") for seq in range(3))
    work = {item["name"]: item for item in agent.get("/api/node/work").json()["work"]}
    assert (work["fresh"]["log_next_seq"], work["rerun"]["log_next_seq"]) == (0, 3)
    assert (work["fresh"]["owner"], work["rerun"]["owner"]) == (None, user.username)
    assert fresh.pk


def test_drain_hands_back_unstarted_work_marks_running_work_to_stop_and_leave_goes_offline(agent_for):
    agent = agent_for("a", cpu=8)
    waiting, running = submit("a", name="waiting"), submit("a", name="running")
    Workload.objects.filter(pk=running.pk).update(status=S.RUNNING)
    answer = agent.post("/api/node/drain", {"epoch": epoch(agent), "policy": "stop"}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["end"] == [str(running.pk)]
    assert Node.objects.get(node_id="a").status == NodeStatus.DRAINING
    assert Workload.objects.get(pk=waiting.pk).status in (S.PENDING, S.LOST)
    assert Workload.objects.get(pk=running.pk).stop_requested_at is not None
    stale = agent.post("/api/node/drain", {"epoch": epoch(agent) + 1, "policy": "stop"}, format="json")
    assert stale.status_code == 409
    left = agent.post("/api/node/leave", {"epoch": epoch(agent)}, format="json")
    assert left.json() == {"status": NodeStatus.OFFLINE}
