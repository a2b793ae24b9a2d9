"""Predict: synchronous through a model server, the seed's asynchronous task, and every refusal."""

import pytest

from mlmodels import inference
from mlmodels.agentside import prediction_run
from mlmodels.models import MLModel, ModelRun, PredictionTask
from mlmodels.predictions import prediction_task_forward
from mlmodels.services import model_serve, model_version_create
from tests.helpers import free_port, supervise_until
from workloads.models import WorkloadStatus

from .conftest import linear_artifact, raising_artifact


def make_model(owner, data: bytes, name: str = "lr") -> MLModel:
    model = MLModel.objects.create(owner=owner, name=name, model_type="linear_regression",
                                   model_path="models/lr.joblib")
    model_version_create(model=model, data=data, filename="lr.joblib", source="upload")
    model.refresh_from_db()
    return model


def serve(agent, model: MLModel) -> ModelRun:
    """Start a model server the way the API does, and let the agent start it as its worker would."""
    run = model_serve(model=model, port=free_port(), node=agent.config.node_id)
    assert run.workload.status == WorkloadStatus.SCHEDULED, run.workload.reason
    agent.start(str(run.workload_id))
    run.workload.refresh_from_db()
    assert run.workload.status == WorkloadStatus.RUNNING, run.workload.reason
    return run


def predict(api, model, body):
    return api.post(f"/api/ml/models/{model.pk}/predict", body, format="json")


def wait_serving(api, agent, model):
    return supervise_until(agent, lambda: predict(api, model, {"input_data": 1, "mode": "sync"}).status_code == 200,
                           timeout=30, message="model server answering")


@pytest.fixture
def served(api, agent, admin_user):
    model = make_model(admin_user, linear_artifact())
    serve(agent, model)
    wait_serving(api, agent, model)
    return model


def test_sync_predict_through_the_model_server(api, served):
    response = predict(api, served, {"input_data": 5.5})  # the seed's body
    assert response.status_code == 200, response.data
    assert response.data["prediction"] == pytest.approx(14.0)
    assert response.data["version"] == 1 and response.data["served_by"]
    batch = predict(api, served, {"input_data": [[1], [2], [3]]}).data["prediction"]
    assert batch == pytest.approx([5.0, 7.0, 9.0])
    assert predict(api, served, {"input_data": [1, 2]}).data["prediction"] == pytest.approx([5.0, 7.0])
    assert api.get(f"/api/ml/models/{served.pk}").data["serving"] is True


@pytest.mark.parametrize("input_data", ["abc", [], [[1], [1, 2]], True, {"x": 1}, [1, "2"], [[]], None])
def test_malformed_input_is_400_naming_input_data(api, admin_user, input_data):
    # Checked by the control plane before any server or task sees it (the server checks again).
    model = make_model(admin_user, linear_artifact())
    response = predict(api, model, {"input_data": input_data})
    assert response.status_code == 400, response.data
    assert response.data["detail"].startswith("input_data")
    assert not PredictionTask.objects.exists()


def test_missing_input_and_unknown_fields_are_400(api, served):
    assert predict(api, served, {}).data["detail"].startswith("input_data")
    assert predict(api, served, {"input_data": 1, "inputs": 2}).status_code == 400
    assert predict(api, served, {"input_data": [[1, 2]]}).status_code == 400  # the model has one feature


def test_oversized_batch_is_413(api, admin_user):
    model = make_model(admin_user, linear_artifact())
    rows = [[1.0]] * (inference.MAX_BATCH_ROWS + 1)
    response = predict(api, model, {"input_data": rows})
    assert response.status_code == 413 and "limit" in response.data["detail"]


def test_a_model_that_raises_is_422_with_its_message(api, agent, admin_user):
    model = make_model(admin_user, raising_artifact(), name="broken")
    serve(agent, model)
    response = supervise_until(agent, lambda: (r := predict(api, model, {"input_data": -1, "mode": "sync"}))
                               and r.status_code != 409 and r, timeout=30, message="broken server up")
    assert response.status_code == 422
    assert "negative inputs are not supported" in response.data["detail"]


def test_not_serving_is_409_when_sync_is_asked(api, admin_user):
    model = make_model(admin_user, linear_artifact())
    response = predict(api, model, {"input_data": 5.5, "mode": "sync"})
    assert response.status_code == 409 and "not serving" in response.data["detail"]


def test_no_version_and_no_server_is_409(api, admin_user):
    model = MLModel.objects.create(owner=admin_user, name="untrained", model_path="m.joblib")
    response = predict(api, model, {"input_data": 5.5})
    assert response.status_code == 409 and "not serving" in response.data["detail"]
    assert not PredictionTask.objects.exists()


def test_seed_async_form_prediction_task_then_result_under_tasks(api, agent, admin_user):
    model = make_model(admin_user, linear_artifact())
    response = predict(api, model, {"input_data": 5.5})  # not serving: the seed's answer
    assert response.status_code == 202
    assert response.data["message"] == "Prediction task created"
    task_id = response.data["prediction_task_id"]
    assert api.get(f"/api/tasks/{task_id}").data["status"] == "pending"
    assert prediction_run(agent, task_id)  # what the agent's task does (its node was sent it)
    assert not prediction_run(agent, task_id)  # idempotent
    task = api.get(f"/api/tasks/{task_id}").data
    assert task["status"] == "succeeded" and task["prediction"] == pytest.approx(14.0)
    assert task["kind"] == "prediction" and "log_file" in task and "version 1" in task["log"]
    assert any(t["id"] == task_id for t in api.get("/api/tasks").data)


def test_async_can_be_asked_even_when_serving_and_the_server_answers_it(api, served):
    response = predict(api, served, {"input_data": 5.5, "mode": "async"})
    assert response.status_code == 202
    task_id = response.data["prediction_task_id"]
    assert prediction_task_forward(task_id=task_id)  # what the control worker's task does
    task = api.get(f"/api/tasks/{task_id}").data
    assert task["status"] == "succeeded" and task["prediction"] == pytest.approx(14.0)
    assert "by the model server on" in task["log"]


def test_async_task_of_a_raising_model_records_the_422(api, agent, admin_user):
    model = make_model(admin_user, raising_artifact(), name="broken")
    task_id = predict(api, model, {"input_data": -1}).data["prediction_task_id"]
    prediction_run(agent, task_id)
    task = api.get(f"/api/tasks/{task_id}").data
    assert task["status"] == "failed" and task["error_status"] == 422
    assert "negative inputs are not supported" in task["error"]


def test_stopping_the_server_makes_predict_409_again(api, agent, served):
    assert api.delete(f"/api/ml/models/{served.pk}/serve").data["stopped"] == 1
    for workload_id in list(agent.handles):
        agent.stop(workload_id)  # the stop message the node's worker would receive
    supervise_until(agent, lambda: not agent.handles, timeout=15, message="server stopped")
    response = predict(api, served, {"input_data": 1, "mode": "sync"})
    assert response.status_code == 409


def test_serve_from_the_workload_working_directory_refuses_escapes(agent, admin_user, tmp_path):
    """Seed 000's mlmodel workload: the artifact comes from the working directory and nowhere else."""
    from nodes.resources import Resources
    from workloads.services import workload_submit

    outside = tmp_path.parent / "outside.joblib"
    outside.write_bytes(linear_artifact())
    (tmp_path / "escape.joblib").symlink_to(outside)
    workload = workload_submit(owner=admin_user, name="escape", type="mlmodel",
                               config={"model_path": "escape.joblib", "port": free_port()},
                               requirements=Resources(cpu=100, memory=10**6), node=agent.config.node_id)
    agent.start(str(workload.pk))
    workload.refresh_from_db()
    assert workload.status == WorkloadStatus.FAILED and "leaves the working directory" in workload.reason
