"""Fixtures for the agent's tests."""

import pytest

from tests.helpers import in_process_agents


@pytest.fixture
def make_agent():
    """``make_agent(node_id, **options)``: an in-process agent, by default for a 1-CPU, 1 GiB node
    that runs processes (``tests.helpers.in_process_agents``); cleaned up after the test."""
    with in_process_agents() as make:
        yield make
