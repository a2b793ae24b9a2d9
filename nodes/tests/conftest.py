import pytest

from nodes.heartbeats import live_node_count_forget


@pytest.fixture(autouse=True)
def fresh_fleet_count():
    """Each test counts its own fleet: the per-process count of live nodes is cached for seconds
    of real time, and time_machine does not move time.monotonic."""
    live_node_count_forget()
    yield
    live_node_count_forget()
