"""ML work on an agent that has no database: every step the agent takes runs with this thread's
database access refused (the control plane, ``live_server``, has its own thread and connection),
so a training run, a model server from the registry and an asynchronous prediction go over the
node API or not at all. And the agent never loads an artifact in its own process."""

import dataclasses
import io
import json
import os
import secrets
from contextlib import contextmanager

import pytest
from django.db import connections

from mlmodels.agentside import prediction_run
from mlmodels.models import MLModel, ModelRun, ModelVersion, PredictionTask, TaskStatus
from mlmodels.services import model_serve, model_version_create
from tests.helpers import ML_NODE_CAPABILITIES, GiB, free_port, in_process_agents, supervise_until, wait_for
from workloads.models import Workload, WorkloadStatus

from .conftest import current
from .test_api_contract import SEED_LINEAR
from .test_training import work_dir_with_examples


def refuse(execute, sql, params, many, context):
    raise AssertionError(f"the agent touched the database: {sql[:200]}")


@contextmanager
def no_database():
    """Every query from this thread fails while the block runs (the agent's steps run in it)."""
    with connections["default"].execute_wrapper(refuse):
        yield


@pytest.fixture
def far_agent(make_ml_agent):
    """An agent whose node advertises 127.0.0.2 (not the default 127.0.0.1): a model server must
    bind there, where the control plane reaches it."""
    return make_ml_agent(address="127.0.0.2")


@pytest.fixture
def make_ml_agent(live_server, tmp_path):
    """``make_ml_agent(**settings)``: a registered in-process agent of a node that runs models,
    with those ``AgentSettings`` changed."""
    with in_process_agents(live_server.url) as make:
        def made(**settings):
            base = make(f"nodb-ml-{secrets.token_hex(3)}", cpu=4, memory=8 * GiB, storage=100 * GiB, work_dir=tmp_path,
                        stop_grace_seconds=2, capabilities=ML_NODE_CAPABILITIES)
            agent = make(config=dataclasses.replace(base.config, **settings))
            agent.register()
            return agent

        yield made


def test_training_then_serving_from_the_registry_with_no_database_on_the_agent(api, far_agent):
    agent = far_agent
    work_dir_with_examples(agent.config.work_dir)
    response = api.post("/api/ml/models", {**SEED_LINEAR, "node": agent.config.node_id}, format="json")
    assert response.status_code == 201, response.data
    model_id = response.data["id"]
    training_id = str(ModelRun.objects.get(model_id=model_id).workload_id)

    with current(agent), no_database():
        agent.start(training_id)
        supervise_until(agent, lambda: training_id not in agent.handles, timeout=90, message="training ended")
    training = Workload.objects.get(pk=training_id)
    assert training.status == WorkloadStatus.SUCCEEDED, training.reason
    version = ModelVersion.objects.get(workload=training)  # stored before the run was reported succeeded
    assert version.number == 1 and version.metrics["r2"] > 0.95 and "stored as version 1" in training.reason

    serving = model_serve(model=MLModel.objects.get(pk=model_id), version=version, port=free_port(),
                          node=agent.config.node_id)
    with current(agent), no_database():
        agent.start(str(serving.workload_id))
        assert str(serving.workload_id) in agent.handles
    running = Workload.objects.get(pk=serving.workload_id)
    assert running.status == WorkloadStatus.RUNNING and running.runtime["server"]["address"] == "127.0.0.2"

    def answered():
        with current(agent), no_database():
            agent.supervise_once()
        reply = api.post(f"/api/ml/models/{model_id}/predict", {"input_data": 5.5, "mode": "sync"}, format="json")
        return reply if reply.status_code == 200 else None

    reply = wait_for(answered, timeout=60, message="the model server answers /predict")
    assert reply.data["prediction"] == pytest.approx(14.0, abs=0.3) and reply.data["served_by"] == agent.config.node_id


def marker_artifact(marker) -> bytes:
    """An artifact whose unpickling writes, to ``marker``, the pid, uid and environment it ran with."""
    import joblib

    from .broken_model import WritesMarker

    buffer = io.BytesIO()
    joblib.dump(WritesMarker(str(marker)), buffer)
    return buffer.getvalue()


def test_an_async_prediction_never_unpickles_in_the_agent(api, admin_user, make_ml_agent, tmp_path, monkeypatch):
    monkeypatch.setenv("CNET_PROBE_SECRET", "agent-only")  # what the agent's own environment holds
    agent = make_ml_agent()
    model = MLModel.objects.create(owner=admin_user, name="marker", model_path="m.joblib")
    model_version_create(model=model, data=marker_artifact(tmp_path / "marker.json"), filename="m.joblib",
                         source="upload")
    model.refresh_from_db()
    task_id = api.post(f"/api/ml/models/{model.pk}/predict", {"input_data": 1}, format="json").data[
        "prediction_task_id"]

    with no_database():
        assert prediction_run(agent, task_id)
    task = PredictionTask.objects.get(pk=task_id)
    assert task.status == TaskStatus.FAILED and task.error_status == 422, task.error  # it is not a model
    ran = json.loads((tmp_path / "marker.json").read_text())
    assert ran["pid"] != os.getpid()  # not in the agent (this process)
    assert "CNET_PROBE_SECRET" not in ran["environ"] and "DATABASE_URL" not in ran["environ"]
