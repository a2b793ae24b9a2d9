"""Fixtures for the agent's tests."""

import uuid

import pytest

from nodes.resources import Resources
from tests.helpers import in_process_agents
from workloads.services import workload_submit


@pytest.fixture
def make_agent(live_server):
    """``make_agent(node_id, **options)``: an in-process agent, by default for a 1-CPU, 1 GiB node
    that runs processes (``tests.helpers.in_process_agents``), talking HTTP to a live control
    plane on the test database; cleaned up after the test."""
    with in_process_agents(live_server.url) as make:
        yield make


@pytest.fixture
def agent_with_work(make_agent):
    """``agent_with_work(name, command, *args, memory=0, **submit)``: a registered in-process agent
    and a workload submitted at its node (not started yet)."""

    def make(name: str, command: str, *args: str, memory: int = 0, **submit):
        node_id = f"{name}-{uuid.uuid4().hex[:6]}"
        agent = make_agent(node_id)
        agent.register()
        workload = workload_submit(owner=None, name=name, type="process", node=node_id,
                                   config={"command": command, "args": list(args)},
                                   requirements=Resources(cpu=100, gpu=0, memory=memory, storage=0), **submit)
        return agent, workload

    return make
