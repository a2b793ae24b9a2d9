"""The supervisor hears of work as soon as it starts, and log numbering survives a restart."""

import sys
import threading

import pytest

from nodes.resources import Resources
from tests.helpers import supervise_until_done, wait_for
from workloads.executors.limits import CgroupLimiter
from workloads.models import Workload, WorkloadLog, WorkloadStatus
from workloads.services import workload_submit


@pytest.mark.django_db(transaction=True)
def test_a_started_workload_wakes_the_supervisor_at_once(agent_with_work):
    # The process may exit before the worker thread hands it over; the SIGCHLD wakeup came too
    # early then, and its exit waited for the supervisor's next pass.
    agent, workload = agent_with_work("waker", "true")
    woken = []
    agent.wake = lambda: woken.append(str(agent.handles.keys()))
    agent.context.wake = lambda: None  # the start's own wake only, not its limits' (set up in a thread)
    agent.start(str(workload.pk))
    assert woken == [str({str(workload.pk): None}.keys())]  # after it is supervised, not before
    assert supervise_until_done(agent, workload).status == WorkloadStatus.SUCCEEDED
    agent.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_rerun_numbers_its_log_chunks_after_those_of_earlier_runs(agent_with_work):
    agent, workload = agent_with_work("numberer", sys.executable, "-c", "print('second run')")
    WorkloadLog.objects.bulk_create(WorkloadLog(workload=workload, seq=seq, stream="stdout", text=f"run 1 line {seq}\n")
                                    for seq in range(3))
    agent.start(str(workload.pk))
    assert supervise_until_done(agent, workload).status == WorkloadStatus.SUCCEEDED
    chunks = list(WorkloadLog.objects.filter(workload=workload).order_by("seq").values_list("seq", "text"))
    assert chunks[-1] == (3, "second run\n") and len(chunks) == 4
    agent.shutdown()


@pytest.mark.django_db(transaction=True)
def test_limits_set_up_beside_the_start_are_stored_for_a_restarted_agent(agent_with_work):
    agent, workload = agent_with_work("limiter", "sleep", "60", memory=64 * 1024**2)
    agent.start(str(workload.pk))

    def stored_by_the_supervisor():
        agent.supervise_once()
        return Workload.objects.get(pk=workload.pk).runtime.get("limits")

    assert wait_for(stored_by_the_supervisor, message="limits stored") in (agent.context.limiter.kind, "watchdog")
    assert Workload.objects.get(pk=workload.pk).runtime == agent.handles[str(workload.pk)].handle.runtime()
    agent.shutdown()
    assert Workload.objects.get(pk=workload.pk).status == WorkloadStatus.STOPPED


@pytest.mark.django_db(transaction=True)
def test_without_cgroups_the_watchdog_kills_work_over_its_memory_once_its_limits_are_known(agent_with_work):
    # Bounded (512 MiB, then it waits), so a watchdog that misses it fails the test, not the machine.
    code = "import time\nheap = []\nwhile len(heap) < 64:\n    heap.append(bytearray(8 << 20)); time.sleep(0.01)\n" \
           "time.sleep(60)"
    agent, workload = agent_with_work("hog", sys.executable, "-c", code, memory=64 * 1024**2)
    agent.context.limiter = CgroupLimiter(group="cnet/none")  # applies nothing: the watchdog's case
    agent.start(str(workload.pk))
    ended = supervise_until_done(agent, workload)
    assert (ended.status, ended.reason) == (WorkloadStatus.FAILED, "memory limit exceeded")
    assert ended.runtime["limits"] == "watchdog"
    agent.shutdown()


@pytest.mark.django_db(transaction=True)
def test_starts_saving_state_at_once_leave_every_started_workload_in_the_state_file(agent_with_work):
    # The agent's worker starts two workloads in two threads; a restarted agent finds (and, if
    # they were lost meanwhile, kills) its survivors from this file, so none may be missing.
    agent, _ = agent_with_work("saver", "true")
    errors = []

    def start(workload_id):
        try:
            agent.start(workload_id)
        except Exception as error:  # e.g. the other writer moved the shared temporary file away
            errors.append(error)

    for _ in range(100):
        ids = [str(workload_submit(
            owner=None, name="saver", type="process", node=agent.config.node_id,
            config={"command": "sleep", "args": ["60"]}, requirements=Resources(cpu=1, gpu=0, memory=0, storage=0),
        ).pk) for _ in range(2)]
        threads = [threading.Thread(target=start, args=(workload_id,)) for workload_id in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors and set(ids) <= set(agent.state_file.load())
        for workload_id in ids:
            agent._drop(workload_id, "next round")
    agent.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_workload_restarted_onto_the_same_node_is_started_there_at_once(agent_with_work):
    # The report of an exit answers that its restart was placed again: the agent asks for its
    # work in the same pass, not a doorbell or a heartbeat later.
    agent, workload = agent_with_work("again", "false", restart_policy="on-failure", max_restarts=2)
    agent.start(str(workload.pk))
    ended = supervise_until_done(agent, workload, timeout=4)  # a heartbeat would be 5 s away
    assert (ended.status, ended.restart_count) == (WorkloadStatus.FAILED, 2)
    assert ended.reason == "exited with code 1"
    agent.shutdown()
