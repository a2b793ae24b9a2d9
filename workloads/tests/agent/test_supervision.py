"""The supervisor hears of work as soon as it starts, and log numbering survives a restart."""

import sys
import uuid

import pytest

from nodes.resources import Resources
from tests.helpers import wait_for
from workloads.models import Workload, WorkloadLog, WorkloadStatus
from workloads.services import workload_submit

from .test_links import agent_for, remove_node_cgroups  # noqa: F401 - autouse cleanup


def submit_at(node_id: str, command: str, *args: str) -> Workload:
    return workload_submit(owner=None, name="quick", type="process", node=node_id,
                           config={"command": command, "args": list(args)},
                           requirements=Resources(cpu=100, gpu=0, memory=0, storage=0))


def supervise_until_done(agent, workload) -> Workload:
    def ended():
        agent.supervise_once()
        row = Workload.objects.get(pk=workload.pk)
        return row if row.status not in (WorkloadStatus.SCHEDULED, WorkloadStatus.RUNNING) else None

    return wait_for(ended, timeout=15, message="the workload ended")


@pytest.mark.django_db(transaction=True)
def test_a_started_workload_wakes_the_supervisor_at_once():
    # The process may exit before the worker thread hands it over; the SIGCHLD wakeup came too
    # early then, and its exit waited for the supervisor's next pass.
    node_id = f"waker-{uuid.uuid4().hex[:6]}"
    agent = agent_for(node_id, port=18341)
    woken = []
    agent.wake = lambda: woken.append(str(agent.handles.keys()))
    agent.register()
    workload = submit_at(node_id, "true")
    agent.start(str(workload.pk))
    assert woken == [str({str(workload.pk): None}.keys())]  # after it is supervised, not before
    assert supervise_until_done(agent, workload).status == WorkloadStatus.SUCCEEDED
    agent.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_rerun_numbers_its_log_chunks_after_those_of_earlier_runs():
    node_id = f"numberer-{uuid.uuid4().hex[:6]}"
    agent = agent_for(node_id, port=18342)
    agent.register()
    workload = submit_at(node_id, sys.executable, "-c", "print('second run')")
    WorkloadLog.objects.bulk_create(WorkloadLog(workload=workload, seq=seq, stream="stdout", text=f"run 1 line {seq}\n")
                                    for seq in range(3))
    agent.start(str(workload.pk))
    assert supervise_until_done(agent, workload).status == WorkloadStatus.SUCCEEDED
    chunks = list(WorkloadLog.objects.filter(workload=workload).order_by("seq").values_list("seq", "text"))
    assert chunks[-1] == (3, "second run\n") and len(chunks) == 4
    agent.shutdown()


@pytest.mark.django_db(transaction=True)
def test_limits_set_up_beside_the_start_are_stored_for_a_restarted_agent():
    node_id = f"limiter-{uuid.uuid4().hex[:6]}"
    agent = agent_for(node_id, port=18343)
    agent.register()
    workload = workload_submit(
        owner=None, name="limited", type="process", node=node_id, config={"command": "sleep", "args": ["60"]},
        requirements=Resources(cpu=100, gpu=0, memory=64 * 1024**2, storage=0))
    agent.start(str(workload.pk))
    stored = Workload.objects.get(pk=workload.pk).runtime
    assert stored["limits"] == agent.context.limiter.kind or stored["limits"] == "watchdog"
    assert stored == agent.handles[str(workload.pk)].handle.runtime()
    agent.shutdown()
    assert Workload.objects.get(pk=workload.pk).status == WorkloadStatus.STOPPED
