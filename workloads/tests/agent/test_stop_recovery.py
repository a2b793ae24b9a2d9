"""A stop whose message never reached the agent still happens: the agent reads the request."""

import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from nodes.resources import Resources
from tests.helpers import wait_for
from workloads.agent.agent import Agent, AgentSettings
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_submit

from .test_links import CREATED, remove_node_cgroups  # noqa: F401 - autouse cleanup


@pytest.mark.django_db(transaction=True)
def test_a_stop_request_whose_message_was_lost_is_carried_out():
    node_id = f"stopper-{uuid.uuid4().hex[:6]}"
    CREATED.append(node_id)
    data_dir = Path(settings.DATA_DIR)
    agent = Agent(AgentSettings(
        node_id=node_id, address="127.0.0.1", port=18331, capacity=Resources(cpu=1000, gpu=0, memory=2**30, storage=0),
        parent=None, peers=[], labels={}, work_dir=data_dir, data_dir=data_dir, stop_grace_seconds=2,
        capabilities={"process": {"available": True}},
    ))
    agent.register()
    workload = workload_submit(owner=None, name="sleeper", type="process", node=node_id,
                               config={"command": "sleep", "args": ["60"]},
                               requirements=Resources(cpu=100, gpu=0, memory=0, storage=0))
    agent.start(str(workload.pk))
    # What workload_stop records; its message to the agent is lost (never published here).
    Workload.objects.filter(pk=workload.pk).update(stop_requested_at=timezone.now())
    agent._last_status_check = 0  # the periodic check is due

    def stopped():
        agent.supervise_once()
        return Workload.objects.get(pk=workload.pk).status == WorkloadStatus.STOPPED

    wait_for(stopped, timeout=15, message="the workload stopped")
    assert "SIGTERM" in Workload.objects.get(pk=workload.pk).reason
    agent.shutdown()
