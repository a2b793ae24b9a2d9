"""Fixtures for mlmodels: a trained artifact, a node that can run ML work, an in-process agent."""

import io
import os
import secrets
import signal
from pathlib import Path

import pytest
from django.conf import settings

from nodes.resources import Resources
from tests.helpers import wait_for
from workloads.agent.agent import Agent, AgentSettings

GiB = 1024**3
EXAMPLES = Path(settings.BASE_DIR) / "examples" / "ml_models"
# This app's tests own ports 18400-18499: 18400-18429 in-process servers, 18450-18479 e2e.
_next_port = [18400 + (os.getpid() % 6) * 5]


def next_port() -> int:
    _next_port[0] += 1
    return _next_port[0]


def linear_artifact(slope: float = 2.0, intercept: float = 3.0) -> bytes:
    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    x = np.arange(20, dtype=float).reshape(-1, 1)
    model = LinearRegression().fit(x, slope * x[:, 0] + intercept)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def raising_artifact() -> bytes:
    import joblib

    from .broken_model import Raises

    buffer = io.BytesIO()
    joblib.dump(Raises(), buffer)
    return buffer.getvalue()


def agent_settings(node_id: str, work_dir: Path) -> AgentSettings:
    return AgentSettings(
        node_id=node_id, address="127.0.0.1", port=8080,
        capacity=Resources(cpu=4000, gpu=0, memory=8 * GiB, storage=100 * GiB),
        parent=None, peers=[], labels={}, work_dir=work_dir, data_dir=Path(settings.DATA_DIR),
        heartbeat_seconds=5, stop_grace_seconds=2,
        capabilities={"process": {"available": True}, "mlmodel": {"available": True}},
    )


@pytest.fixture
def agent(db, tmp_path):
    """A real Agent in this process (the one ``runagent`` runs), on a node of its own.

    Tests call ``agent.start(id)`` where the node's Celery worker would; every process it
    started is killed at teardown."""
    node_id = f"ml-{secrets.token_hex(3)}"
    instance = Agent(agent_settings(node_id, tmp_path))
    instance.register()
    yield instance
    for supervised in list(instance.handles.values()):
        supervised.handle.kill()
        supervised.handle.cleanup()


def run_agent_until(agent: Agent, predicate, timeout: float = 30.0, message: str = "condition"):
    """Drive the agent's supervisor loop (as runagent does) until ``predicate()`` holds."""

    def step():
        agent.supervise_once()
        return predicate()

    return wait_for(step, timeout=timeout, every=0.1, message=message)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
