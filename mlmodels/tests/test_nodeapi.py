"""The node API's ML endpoints: each acts for the credential's own node only (another node's work is
403, nothing written), on the real database, with the clients an agent's credential makes."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from mlmodels.models import MLModel, ModelVersion, PredictionTask, TaskStatus
from mlmodels.predictions import prediction_task_create, prediction_task_dispatch
from mlmodels.services import model_serve, model_version_create
from nodes.models import Node
from nodes.resources import Resources
from nodes.services import join_token_create, node_join
from tests.helpers import ML_NODE_CAPABILITIES, make_node
from workloads.models import WorkloadEvent, WorkloadStatus
from workloads.services import workload_submit
from workloads.tests.nodeapi.conftest import node_client, report_item

from .conftest import linear_artifact

pytestmark = pytest.mark.django_db

TRAINING = {"model_path": "m.joblib", "command": "python3", "args": ["train.py"]}


def agent_client(node_id: str):
    """A registered node that runs models, and a client holding its credential."""
    make_node(node_id, capabilities=ML_NODE_CAPABILITIES)
    return node_client(node_join(token=join_token_create(), node_id=node_id))


def running_training(client, node_id: str, **config):
    workload = workload_submit(owner=None, name="train", type="mlmodel", config={**TRAINING, **config},
                               requirements=Resources(cpu=100, memory=10**6), node=node_id)
    epoch = Node.objects.get(node_id=node_id).agent_epoch
    answer = client.post("/api/node/reports", {"reports": [report_item(workload, "running", epoch=epoch)]},
                         format="json")
    assert answer.json()["results"][0]["accepted"], answer.json()
    return workload


def upload(client, workload, data: bytes = b"artifact-bytes", **fields):
    body = {"workload_id": str(workload.pk), "filename": "m.joblib", "metrics": json.dumps({"r2": 0.9}),
            "file": SimpleUploadedFile("m.joblib", data), **fields}
    return client.post("/api/node/ml/artifacts", body, format="multipart")


@pytest.fixture
def two():
    return agent_client("a"), agent_client("b")


def test_a_running_training_run_stores_its_artifact_once_however_often_it_is_sent(two):
    a, _b = two
    workload = running_training(a, "a")
    first = upload(a, workload)
    assert first.status_code == 201, first.json()
    again = upload(a, workload)  # the answer was lost; the agent sends it again
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    version = ModelVersion.objects.get(workload=workload)
    assert bytes(version.artifact) == b"artifact-bytes" and version.metrics == {"r2": 0.9} and version.number == 1
    assert first.json()["checksum"] == version.checksum and first.json()["size_bytes"] == len(b"artifact-bytes")


def test_another_nodes_training_run_is_403_and_nothing_is_stored(two):
    a, b = two
    theirs = running_training(b, "b")
    answer = upload(a, theirs)
    assert answer.status_code == 403 and "not placed on node a" in answer.json()["detail"]
    assert not ModelVersion.objects.exists() and not MLModel.objects.exists()


def test_an_artifact_is_taken_only_from_a_running_training_run(two, settings):
    a, _b = two
    scheduled = workload_submit(owner=None, name="t", type="mlmodel", config=TRAINING,
                                requirements=Resources(cpu=100, memory=10**6), node="a")
    assert upload(a, scheduled).status_code == 409
    server = workload_submit(owner=None, name="s", type="mlmodel", config={"model_path": "m.joblib"},
                             requirements=Resources(cpu=100, memory=10**6), node="a")
    assert upload(a, server).json()["workload_id"] == [f"workload {server.pk} is not a training run"]
    workload = running_training(a, "a")
    assert upload(a, workload, metrics="[1]").json()["metrics"] == ["must be a JSON object"]
    settings.CNET_ML_MAX_ARTIFACT_BYTES = 10
    too_big = upload(a, workload, data=b"x" * 11)
    assert too_big.status_code == 413 and too_big.json()["file"]
    assert not ModelVersion.objects.exists()


def test_notes_only_for_this_nodes_workloads(two):
    a, b = two
    mine, theirs = running_training(a, "a"), running_training(b, "b")
    assert a.post("/api/node/ml/notes", {"workload_id": str(mine.pk), "reason": "evaluate timed out"},
                  format="json").status_code == 204
    assert WorkloadEvent.objects.filter(workload=mine, reason="evaluate timed out").exists()
    refused = a.post("/api/node/ml/notes", {"workload_id": str(theirs.pk), "reason": "forged"}, format="json")
    assert refused.status_code == 403 and not WorkloadEvent.objects.filter(reason="forged").exists()


def served_version(node_id: str) -> ModelVersion:
    model = MLModel.objects.create(name="lr", model_path="m.joblib")
    version = model_version_create(model=model, data=linear_artifact(), filename="lr.joblib", source="upload")
    run = model_serve(model=model, version=version, node=node_id)
    assert run.workload.status == WorkloadStatus.SCHEDULED
    return version


def test_a_version_is_read_only_by_a_node_that_serves_it(two):
    a, b = two
    version = served_version("a")
    facts = a.get(f"/api/node/ml/versions/{version.pk}")
    assert facts.status_code == 200 and facts.json()["checksum"] == version.checksum
    artifact = a.get(f"/api/node/ml/versions/{version.pk}/artifact")
    assert artifact.status_code == 200 and artifact.content == linear_artifact()
    assert artifact["X-Checksum-SHA256"] == version.checksum
    for path in (f"/api/node/ml/versions/{version.pk}", f"/api/node/ml/versions/{version.pk}/artifact"):
        assert b.get(path).status_code == 403  # nothing placed on b serves it


def prediction_sent_to_a(two) -> PredictionTask:
    model = MLModel.objects.create(name="lr", model_path="m.joblib")
    model_version_create(model=model, data=linear_artifact(), filename="lr.joblib", source="upload")
    model.refresh_from_db()
    Node.objects.filter(node_id="b").update(status="offline")  # so it is sent to a
    task = prediction_task_create(model=model, input_data=[1.0, 2.0])
    assert prediction_task_dispatch(task_id=str(task.pk))
    return task


def test_a_prediction_task_is_claimed_and_answered_only_by_the_node_it_was_sent_to(two):
    a, b = two
    task = prediction_sent_to_a(two)
    claim_path, result_path = (f"/api/node/ml/predictions/{task.pk}/{step}" for step in ("claim", "result"))
    assert b.post(claim_path).status_code == 403
    claim = a.post(claim_path)
    assert claim.status_code == 200 and claim.json()["attempt"] == 1 and claim.json()["input_data"] == [1.0, 2.0]
    version = claim.json()["version"]
    assert a.get(f"/api/node/ml/versions/{version['id']}/artifact").status_code == 200  # it runs it here
    assert b.get(f"/api/node/ml/versions/{version['id']}/artifact").status_code == 403
    assert a.post(claim_path).status_code == 409  # a redelivered message runs nothing twice
    answer = {"attempt": 1, "prediction": [5.0, 7.0], "elapsed_ms": 3.5}
    assert b.post(result_path, answer, format="json").status_code == 403
    assert a.post(result_path, {**answer, "attempt": 2}, format="json").json() == {"recorded": False}
    assert a.post(result_path, {"attempt": 1, "elapsed_ms": 1}, format="json").status_code == 400
    assert a.post(result_path, answer, format="json").json() == {"recorded": True}
    task.refresh_from_db()
    assert task.status == TaskStatus.SUCCEEDED and task.result == {"prediction": [5.0, 7.0], "version": 1}
    assert "predicted with version 1" in task.log and "on node a" in task.log


def test_the_schema_lists_the_ml_node_endpoints(api):
    schema = api.get("/api/schema", HTTP_ACCEPT="application/json").json()["paths"]
    for path in ("/api/node/ml/artifacts", "/api/node/ml/versions/{version_id}",
                 "/api/node/ml/versions/{version_id}/artifact", "/api/node/ml/notes",
                 "/api/node/ml/predictions/{task_id}/claim", "/api/node/ml/predictions/{task_id}/result"):
        assert any(found.rstrip("/") == path for found in schema), path


def test_a_user_token_is_not_a_node_credential(api):
    assert api.post("/api/node/ml/notes", {"workload_id": "x", "reason": "r"}, format="json").status_code == 401
