"""A stop whose message never reached the agent still happens: the next heartbeat says so."""

import uuid

import pytest

from nodes.resources import Resources
from tests.helpers import wait_for
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_request_stop, workload_submit


@pytest.mark.django_db(transaction=True)
def test_a_stop_request_whose_message_was_lost_is_carried_out(make_agent):
    node_id = f"stopper-{uuid.uuid4().hex[:6]}"
    agent = make_agent(node_id, stop_grace_seconds=2)
    agent.register()
    workload = workload_submit(owner=None, name="sleeper", type="process", node=node_id,
                               config={"command": "sleep", "args": ["60"]},
                               requirements=Resources(cpu=100, gpu=0, memory=0, storage=0))
    agent.start(str(workload.pk))
    workload_request_stop(workload_id=workload.pk)  # what workload_stop records; its message is lost
    agent.heartbeat_once()  # the answer lists it under "stop"

    def stopped():
        agent.supervise_once()
        return Workload.objects.get(pk=workload.pk).status == WorkloadStatus.STOPPED

    wait_for(stopped, timeout=15, message="the workload stopped")
    assert "SIGTERM" in Workload.objects.get(pk=workload.pk).reason
    agent.shutdown()
