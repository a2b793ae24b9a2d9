"""Self-fencing: an agent that has not reached the database for nearly the offline grace kills
its work itself, before the control plane may run it elsewhere (tests/cluster cuts a real link)."""

import time
import uuid

import psutil
import pytest

from nodes.resources import Resources
from tests.helpers import wait_for
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_submit

S = WorkloadStatus


@pytest.mark.django_db(transaction=True)
def test_a_silent_agent_kills_its_work_and_reports_it_lost_once_back_in_touch(make_agent, settings):
    settings.CNET_HEARTBEAT_SECONDS = 2  # what the control plane answers is what the agent obeys
    node_id = f"fence-{uuid.uuid4().hex[:6]}"
    agent = make_agent(node_id)
    agent.register()
    assert agent.fence_after == settings.CNET_OFFLINE_AFTER_SECONDS - 2
    workload = workload_submit(owner=None, name="fenced", type="process", node=node_id,
                               config={"command": "sleep", "args": ["60"]}, restart_policy="on-failure",
                               requirements=Resources(cpu=100, gpu=0, memory=0, storage=0))
    agent.start(str(workload.pk))
    pid = Workload.objects.get(pk=workload.pk).runtime["pid"]
    assert not agent.fence_once(), "in touch: nothing to fence"

    agent.last_contact = time.monotonic() - agent.fence_after - 0.1  # silent that long
    assert agent.fence_once()
    assert not agent.handles
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             timeout=5, message="the fenced process died")
    assert Workload.objects.get(pk=workload.pk).status == S.RUNNING  # the database is not told yet

    agent.heartbeat_once()  # back in touch: the loss is recorded and the restart policy applies
    events = list(workload.events.filter(to_status=S.LOST).values_list("reason", flat=True))
    assert len(events) == 1 and "self-fencing" in events[0]
    assert Workload.objects.get(pk=workload.pk).restart_count == 1
    assert not agent.fenced
    agent.shutdown()
