"""Issue 14 point 6: a workload's ``on_disconnect`` chooses what happens to it while its node is cut
off from the control plane, over the node API with a real in-process agent and real processes.
``stop`` on a ``never`` workload: its agent stops it at fence time and it ends lost, saying why.
``keep`` on an ``on-failure`` one: its agent keeps it running, the control plane holds it while its
node is offline (never a second copy) and its reports reconcile it when the agent is back; a node
that will not come back (credential revoked, row removed) loses it, and it is replaced."""

import os
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from nodes.models import Node
from nodes.resources import Resources
from nodes.services import node_credential_revoke, node_mark_offline
from tests.helpers import make_node, supervise_until, wait_for, workload_row
from workloads import control
from workloads.models import Workload, WorkloadLog, WorkloadStatus
from workloads.services import workload_submit, workload_transition
from workloads.services.disconnect import UNREACHABLE

S = WorkloadStatus
CPU = Resources(cpu=100, gpu=0, memory=0, storage=0)


def submit(node_id: str, *args: str, command: str = "sleep", **extra) -> Workload:
    return workload_submit(owner=None, name="cut-off", type="process", node=node_id, requirements=CPU,
                           config={"command": command, "args": list(args) or ["60"]}, **extra)


def registered(make_agent, name: str):
    agent = make_agent(f"{name}-{uuid.uuid4().hex[:6]}")
    agent.register()
    return agent


def cut_off(agent) -> None:
    """As if the control plane had answered nothing for the agent's fence time."""
    agent.last_contact = time.monotonic() - agent.fence_after - 0.1


def alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture
def gate():
    """A file whose appearance ends the gated workload (its folder readable by a workload's uid)."""
    folder = Path(tempfile.mkdtemp(prefix="cnet-gate-"))
    os.chmod(folder, 0o755)
    yield folder / "open"
    (folder / "open").unlink(missing_ok=True)
    folder.rmdir()


@pytest.mark.django_db(transaction=True)
def test_the_work_answer_says_what_the_agent_does_when_cut_off(make_agent):
    agent = registered(make_agent, "answer")
    node_id = agent.config.node_id
    chosen = {
        submit(node_id).pk: "keep",  # never: kept by default
        submit(node_id, restart_policy="on-failure").pk: "stop",  # replaceable: stopped by default
        submit(node_id, restart_policy="never", on_disconnect="stop").pk: "stop",
        submit(node_id, restart_policy="always", on_disconnect="keep").pk: "keep",
    }
    work = agent.client.work()["work"]
    assert {uuid.UUID(details["id"]): details["on_disconnect"] for details in work} == chosen


@pytest.mark.django_db(transaction=True)
def test_stop_on_a_never_workload_is_stopped_at_fence_time_and_ends_lost_saying_why(make_agent):
    agent = registered(make_agent, "stop")
    stopped = submit(agent.config.node_id, restart_policy="never", on_disconnect="stop")
    kept = submit(agent.config.node_id, restart_policy="never")  # the default for never: keep
    for workload in (stopped, kept):
        agent.start(str(workload.pk))
    pid, kept_pid = (workload_row(w.pk).runtime["pid"] for w in (stopped, kept))

    cut_off(agent)
    assert agent.fence_once()
    assert set(agent.handles) == {str(kept.pk)}
    wait_for(lambda: not alive(pid), timeout=5, message="the stopped copy died")
    assert alive(kept_pid)

    agent.heartbeat_once()  # back in touch: its end is reported
    row = workload_row(stopped.pk)
    assert row.status == S.LOST
    assert "could not reach the control plane" in row.reason and "on_disconnect: stop" in row.reason
    assert row.restart_count == 0 and Workload.objects.filter(name="cut-off").count() == 2  # not replaced
    assert workload_row(kept.pk).status == S.RUNNING


@pytest.mark.django_db(transaction=True)
def test_keep_on_an_on_failure_workload_runs_on_while_its_node_is_offline_and_is_never_replaced(
        make_agent, gate):
    agent = registered(make_agent, "keep")
    make_node(f"spare-{uuid.uuid4().hex[:6]}")  # where a replacement would go
    workload = submit(agent.config.node_id, "-c", f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; "
                      "echo finished", command="sh", restart_policy="on-failure", on_disconnect="keep")
    agent.start(str(workload.pk))
    pid = workload_row(workload.pk).runtime["pid"]

    cut_off(agent)
    assert not agent.fence_once(), "kept work is not fenced"
    assert str(workload.pk) in agent.handles and alive(pid)

    node_mark_offline(node_id=agent.config.node_id)  # the control plane declares the node offline
    for _ in range(2):  # the loop says it once, whatever the passes
        assert control.mark_lost_on_offline_nodes() == 0
    row = workload_row(workload.pk)
    assert (row.status, row.node.node_id) == (S.RUNNING, agent.config.node_id)
    assert row.reason.startswith(UNREACHABLE) and "on_disconnect: keep" in row.reason
    assert workload.events.filter(reason__startswith=UNREACHABLE).count() == 1
    assert Workload.objects.count() == 1 and row.restart_count == 0  # one copy: nothing replaced it

    agent.heartbeat_once()  # its answer says offline: the agent rejoins with what is still its own
    assert str(workload.pk) in agent.handles and alive(pid)
    assert Node.objects.get(node_id=agent.config.node_id).status == "ready"
    control.mark_lost_on_offline_nodes()
    assert "reachable again" in workload_row(workload.pk).reason

    gate.touch()
    row = supervise_until(agent, lambda: (row := workload_row(workload.pk)).status not in (S.RUNNING,) and row,
                          timeout=15, message="the kept workload ended")
    assert (row.status, row.restart_count) == (S.SUCCEEDED, 0)
    text = supervise_until(agent, lambda: "finished" in (text := "".join(
        WorkloadLog.objects.filter(workload=workload).values_list("text", flat=True))) and text,
        timeout=10, message="its output arrived")
    assert text.index("started") < text.index("finished")
    assert Workload.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_kept_work_of_a_node_whose_credential_is_revoked_is_lost_and_replaced(make_agent):
    agent = registered(make_agent, "revoked")
    spare = make_node(f"spare-{uuid.uuid4().hex[:6]}", parent=agent.config.node_id)  # the next candidate
    workload = submit(agent.config.node_id, restart_policy="on-failure", on_disconnect="keep")
    agent.start(str(workload.pk))
    node_mark_offline(node_id=agent.config.node_id)
    control.mark_lost_on_offline_nodes()
    assert workload_row(workload.pk).status == S.RUNNING  # held

    assert node_credential_revoke(node_id=agent.config.node_id)
    assert control.mark_lost_on_offline_nodes() == 1
    lost = workload.events.get(to_status=S.LOST)
    assert "credential was revoked" in lost.reason
    row = workload_row(workload.pk)
    assert (row.status, row.node.node_id, row.restart_count) == (S.SCHEDULED, spare.node_id, 1)


@pytest.mark.django_db
def test_kept_work_whose_node_row_was_removed_is_lost_and_replaced():
    gone = make_node("gone")
    workload = submit("gone", restart_policy="on-failure", on_disconnect="keep")
    workload_transition(workload_id=workload.pk, to=S.RUNNING)
    Node.objects.filter(pk=gone.pk).delete()  # as if its row were removed under it
    assert control.mark_lost_on_offline_nodes() == 1
    assert workload.events.get(to_status=S.LOST).reason == "its node was removed"
    row = workload_row(workload.pk)
    assert (row.status, row.restart_count) == (S.PENDING, 1)  # back in the queue, to run elsewhere


@pytest.mark.django_db
def test_a_node_going_offline_still_loses_work_that_did_not_choose_keep():
    make_node("down")
    default_never = submit("down")
    stop = submit("down", restart_policy="never", on_disconnect="stop")
    for workload in (default_never, stop):
        workload_transition(workload_id=workload.pk, to=S.RUNNING)
    node_mark_offline(node_id="down")
    assert control.mark_lost_on_offline_nodes() == 2
    assert {workload_row(w.pk).status for w in (default_never, stop)} == {S.LOST}
