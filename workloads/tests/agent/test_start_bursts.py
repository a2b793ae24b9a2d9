"""A burst of starts is reported in one batch, a long list is started in bounded bursts, and
beats do not wait on them."""

import uuid

import pytest

from nodes.resources import Resources
from tests.helpers import supervise_until, wait_for
from workloads.agent import supervision
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_submit


def _node_with_work(make_agent, count: int):
    node_id = f"burst-{uuid.uuid4().hex[:6]}"
    agent = make_agent(node_id)
    agent.register()
    works = [workload_submit(owner=None, name=f"w-{n}", type="process", node=node_id,
                             config={"command": "sleep", "args": ["30"]},
                             requirements=Resources(cpu=10, gpu=0, memory=0, storage=0)) for n in range(count)]
    return agent, works


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_starts_goes_to_the_control_plane_in_one_batch(make_agent):
    agent, works = _node_with_work(make_agent, 4)
    batches = []
    send = agent.client.reports
    agent.client.reports = lambda reports: batches.append(len(reports)) or send(reports)
    agent.start()
    assert batches == [4]
    assert {w.status for w in Workload.objects.filter(pk__in=[w.pk for w in works])} == {WorkloadStatus.RUNNING}
    agent.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_list_longer_than_a_burst_is_started_a_burst_per_pass(make_agent, monkeypatch):
    monkeypatch.setattr(supervision, "START_BURST", 2)
    agent, works = _node_with_work(make_agent, 5)
    agent.start()
    assert len(agent.handles) == 2  # the caller (maybe the main loop) is held up by one burst only
    ids = [w.pk for w in works]
    supervise_until(agent, lambda: Workload.objects.filter(pk__in=ids, status=WorkloadStatus.RUNNING).count() == 5,
                    timeout=30, message="every listed workload started")
    wait_for(lambda: len(agent.handles) == 5, message="all supervised")
    agent.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_beat_goes_on_while_a_burst_of_starts_is_held_up(make_agent):
    # As in runagent: the starts a beat wants run in the starter thread. Holding the agent's lock
    # holds a burst where a slow start would (a burst takes it first); the beat still returns.
    agent, works = _node_with_work(make_agent, 3)
    agent.start_beside_loop()
    with agent.lock:  # the beat's thread may take it again; the starter may not
        assert agent.heartbeat_once()
        assert not agent.handles and not agent.starting
        assert agent.heartbeat_once()  # and again: beats are not held up either
    ids = [w.pk for w in works]
    wait_for(lambda: len(agent.handles) == 3, message="the starter started the beat's work")
    assert Workload.objects.filter(pk__in=ids, status=WorkloadStatus.RUNNING).count() == 3
    agent.shutdown()
