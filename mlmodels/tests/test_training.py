"""A training run on a real agent (in this process): the seed's deployment end to end on one node."""

import os

from mlmodels.models import ModelRun, ModelVersion
from tests.helpers import in_process_agents, supervise_until
from workloads.models import Workload, WorkloadStatus

from .conftest import EXAMPLES, current
from .test_api_contract import SEED_LINEAR


def work_dir_with_examples(path):
    (path / "examples").mkdir()
    os.symlink(EXAMPLES, path / "examples" / "ml_models")


def deploy_and_run(api, agent, body) -> Workload:
    work_dir_with_examples(agent.config.work_dir)
    response = api.post("/api/ml/models", {**body, "node": agent.config.node_id}, format="json")
    assert response.status_code == 201, response.data
    workload_id = str(ModelRun.objects.get(model_id=response.data["id"]).workload_id)
    agent.start(workload_id)
    supervise_until(agent, lambda: Workload.objects.get(pk=workload_id).status not in
                    (WorkloadStatus.SCHEDULED, WorkloadStatus.RUNNING), timeout=90, message="training ended")
    return Workload.objects.get(pk=workload_id)


def test_seed_linear_regression_trains_and_lands_in_the_registry(api, agent):
    workload = deploy_and_run(api, agent, SEED_LINEAR)
    assert workload.status == WorkloadStatus.SUCCEEDED, workload.reason
    version = ModelVersion.objects.get(workload=workload)
    assert version.number == 1 and version.size_bytes > 0 and len(version.checksum) == 64
    assert version.metrics["r2"] > 0.95 and version.filename == "linear_regression_model.joblib"
    model = api.get(f"/api/ml/models/{version.model_id}").data
    assert model["status"] == "succeeded" and model["promoted_version"]["number"] == 1 and model["started_at"]
    logs = api.get(f"/api/ml/models/{version.model_id}/logs?lines=100").data
    assert "training LinearRegression on 1000 samples" in logs["logs"]
    tasks = api.get("/api/tasks").data
    assert tasks[0]["log_file"].endswith(".stdout.log") and "status" in tasks[0]["log"]


def test_a_run_that_writes_no_artifact_fails_saying_so(api, agent):
    body = {**SEED_LINEAR, "model_path": "models/elsewhere.joblib"}
    workload = deploy_and_run(api, agent, body)
    assert workload.status == WorkloadStatus.FAILED
    assert "wrote no artifact" in workload.reason and not ModelVersion.objects.exists()


def test_a_failing_training_command_fails_without_a_version(api, agent):
    body = {**SEED_LINEAR, "args": ["examples/ml_models/simple_linear_regression.py", "train",
                                    "models/linear_regression_model.joblib", "not-a-number"]}
    workload = deploy_and_run(api, agent, body)
    assert workload.status == WorkloadStatus.FAILED and workload.exit_code == 1
    assert not ModelVersion.objects.exists()


def test_a_training_run_that_outlives_its_agent_still_lands_in_the_registry(api, agent, live_server):
    from mlmodels.executor import TrainingHandle

    work_dir_with_examples(agent.config.work_dir)
    response = api.post("/api/ml/models", {**SEED_LINEAR, "node": agent.config.node_id}, format="json")
    workload_id = str(ModelRun.objects.get(model_id=response.data["id"]).workload_id)
    agent.start(workload_id)
    assert Workload.objects.get(pk=workload_id).status == WorkloadStatus.RUNNING

    # The agent goes away (its supervisor state with it); a new one starts on the same node.
    agent.handles.clear()
    with in_process_agents(live_server.url) as make_agent:
        restarted = make_agent(config=agent.config)
        restarted.register()
        restarted.reconcile()
        adopted = restarted.handles[workload_id].handle
        assert isinstance(adopted, TrainingHandle)
        with current(restarted):
            supervise_until(restarted, lambda: Workload.objects.get(pk=workload_id).status not in
                            (WorkloadStatus.SCHEDULED, WorkloadStatus.RUNNING), timeout=90, message="training ended")
    workload = Workload.objects.get(pk=workload_id)
    assert workload.status == WorkloadStatus.SUCCEEDED, workload.reason
    assert ModelVersion.objects.get(workload=workload).metrics["r2"] > 0.95
