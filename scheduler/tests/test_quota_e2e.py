"""Issue 15, point 8: over-quota work waits with its reason and runs later. As a user without
staff rights, through the API, on a real agent running real processes."""

import uuid

import pytest

from scheduler.models import Quota
from tests.helpers import GiB, in_process_agents, supervise_until, workload_row
from workloads.models import ACTIVE
from workloads.tasks import place_pending

pytestmark = pytest.mark.django_db(transaction=True)


def submit(api, node_id: str, text: str) -> dict:
    answer = api.post("/api/workloads", {
        "name": text, "type": "process", "node": node_id, "config": {"command": "echo", "args": [text]},
        "requirements": {"cpu": 1, "memory": 64 * 1024 * 1024},
    }, format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()


def run_to_end(agent, workload_id: str):
    agent.start(workload_id)  # the doorbell its placement rang
    return supervise_until(agent, lambda: (row := workload_row(workload_id)).status not in ACTIVE and row,
                           timeout=20, message=f"workload {workload_id} ended")


def test_over_quota_work_waits_with_its_reason_and_runs_when_the_users_own_work_ends(live_server, user, user_api):
    Quota.objects.create(user=user, cpu_millicores=1000)
    with in_process_agents(live_server.url) as make:
        agent = make(f"quota-{uuid.uuid4().hex[:6]}", cpu=4, memory=2 * GiB)  # room for four
        agent.register()
        first = submit(user_api, agent.config.node_id, "first")
        second = submit(user_api, agent.config.node_id, "second")
        assert first["status"] == "scheduled"
        assert (second["status"], second["reason"]) == ("pending", "quota: alice uses 1 of 1 CPU")
        assert place_pending() == 0  # a pass while the first runs: the node has room, the quota none

        assert run_to_end(agent, first["id"]).status == "succeeded"
        # Its end rang the pending pass's doorbell (workloads.place_pending); the pass the control
        # worker then runs:
        assert place_pending() == 1
        assert workload_row(second["id"]).status == "scheduled"
        assert run_to_end(agent, second["id"]).status == "succeeded"

        assert user_api.get(f"/api/workloads/{second['id']}/logs").json()["logs"].strip() == "second"
        reasons = [event["reason"] for event in user_api.get(f"/api/workloads/{second['id']}/events").json()]
        assert "quota: alice uses 1 of 1 CPU" in reasons
        assert any(reason.startswith("placed on") for reason in reasons)
        agent.shutdown()
