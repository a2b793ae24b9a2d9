"""Fixtures for mlmodels: a trained artifact, a node that can run ML work, an in-process agent."""

import io
import secrets
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings

from tests.helpers import ML_NODE_CAPABILITIES, GiB, in_process_agents, make_node
from workloads.agent.runtime import set_current_agent

EXAMPLES = Path(settings.BASE_DIR) / "examples" / "ml_models"


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


@pytest.fixture
def agent(live_server, tmp_path):
    """A real Agent in this process (the one ``runagent`` runs), on a node of its own that runs
    ML work, working in ``tmp_path``.

    Tests call ``agent.start(id)`` where the node's Celery worker would; every process it
    started is killed at teardown. It is this process's agent, as ``runagent`` makes its own:
    the ML executor and prediction tasks reach the control plane through its client."""
    with in_process_agents(live_server.url) as make_agent:
        instance = make_agent(f"ml-{secrets.token_hex(3)}", cpu=4, memory=8 * GiB, storage=100 * GiB,
                              work_dir=tmp_path, stop_grace_seconds=2, capabilities=ML_NODE_CAPABILITIES)
        instance.register()
        with current(instance):
            yield instance


@contextmanager
def current(agent):
    """``agent`` as this process's agent (``workloads.agent.runtime``) while the block runs."""
    set_current_agent(agent)
    try:
        yield agent
    finally:
        set_current_agent(None)


@pytest.fixture
def node(db):
    """The local node, registered as one that runs ML work (no agent behind it)."""
    return make_node("local", cpu=4, capabilities=ML_NODE_CAPABILITIES)
