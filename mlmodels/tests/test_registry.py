"""Versions: stored from training runs and uploads, listed, promoted, downloaded."""

import hashlib
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from mlmodels.models import MLModel, ModelRun, ModelVersion, RunKind
from mlmodels.services import model_serve, model_version_create, model_version_store_from_training
from nodes.resources import Resources
from tests.helpers import ML_NODE_CAPABILITIES, make_node
from workloads.models import WorkloadStatus
from workloads.services import workload_submit, workload_transition

from .conftest import linear_artifact


@pytest.fixture
def model(admin_user):
    return MLModel.objects.create(owner=admin_user, name="lr", model_type="linear_regression",
                                  model_path="models/lr.joblib")


def test_versions_are_numbered_and_the_first_is_promoted(model):
    first = model_version_create(model=model, data=b"one", filename="lr.joblib", source="upload")
    second = model_version_create(model=model, data=b"two", filename="lr.joblib", source="upload",
                                  metrics={"r2": 0.9})
    assert (first.number, second.number) == (1, 2)
    assert first.checksum == hashlib.sha256(b"one").hexdigest() and first.size_bytes == 3
    model.refresh_from_db()
    assert model.promoted_version_id == first.pk


def test_a_successful_training_run_stores_its_artifact_once(admin_user):
    make_node("local", capabilities=ML_NODE_CAPABILITIES)
    workload = workload_submit(owner=admin_user, name="t", type="mlmodel",
                               config={"model_path": "m.joblib", "command": "python3", "args": []},
                               requirements=Resources(cpu=100, memory=10**6))
    # Submitted through /api/workloads (no model yet): the run gets a model of its own.
    version = model_version_store_from_training(workload_id=workload.pk, data=b"artifact", metrics={"r2": 1.0},
                                                filename="m.joblib")
    again = model_version_store_from_training(workload_id=workload.pk, data=b"artifact", metrics={"r2": 1.0},
                                              filename="m.joblib")
    assert again.pk == version.pk and ModelVersion.objects.count() == 1
    run = ModelRun.objects.get(workload=workload)
    assert run.kind == RunKind.TRAINING and run.version_id == version.pk
    assert version.metrics == {"r2": 1.0} and version.source == "training"


def test_upload_list_promote_download(api, model):
    data = linear_artifact()
    up = api.post(f"/api/ml/models/{model.pk}/versions",
                  {"file": SimpleUploadedFile("lr.joblib", data), "metrics": '{"r2": 0.99}'}, format="multipart")
    assert up.status_code == 201, up.data
    assert up.data["number"] == 1 and up.data["promoted"] and up.data["metrics"] == {"r2": 0.99}
    assert up.data["checksum"] == hashlib.sha256(data).hexdigest() and up.data["size_bytes"] == len(data)
    second = api.post(f"/api/ml/models/{model.pk}/versions", {"file": SimpleUploadedFile("lr2.joblib", b"x" * 10)},
                      format="multipart").data
    assert second["number"] == 2 and not second["promoted"]

    listed = api.get(f"/api/ml/models/{model.pk}/versions").data
    assert [v["number"] for v in listed] == [2, 1] and [v["promoted"] for v in listed] == [False, True]

    promoted = api.post(f"/api/ml/models/{model.pk}/versions/{second['id']}/promote")
    assert promoted.status_code == 200 and promoted.data["promoted"]
    assert api.get(f"/api/ml/models/{model.pk}").data["promoted_version"]["number"] == 2

    download = api.get(f"/api/ml/models/{model.pk}/versions/{up.data['id']}/download")
    assert download.status_code == 200 and download.content == data
    assert download["X-Checksum-SHA256"] == up.data["checksum"]
    assert 'filename="lr.joblib"' in download["Content-Disposition"]
    import joblib

    assert joblib.load(io.BytesIO(download.content)).predict([[5.5]])[0] == pytest.approx(14.0)


def test_upload_refuses_bad_input_whole(api, model):
    assert api.post(f"/api/ml/models/{model.pk}/versions", {}, format="multipart").status_code == 400
    empty = api.post(f"/api/ml/models/{model.pk}/versions", {"file": SimpleUploadedFile("e.joblib", b"")},
                     format="multipart")
    assert empty.status_code == 400
    bad_metrics = api.post(f"/api/ml/models/{model.pk}/versions",
                           {"file": SimpleUploadedFile("a.joblib", b"a"), "metrics": "[1"}, format="multipart")
    assert bad_metrics.status_code == 400 and bad_metrics.data["detail"].startswith("metrics")
    assert not ModelVersion.objects.exists()


def test_versions_of_another_model_or_user_are_not_reachable(api, user_api, model, admin_user):
    other = MLModel.objects.create(owner=admin_user, name="other", model_path="o.joblib")
    version = model_version_create(model=other, data=b"o", filename="o.joblib", source="upload")
    assert api.post(f"/api/ml/models/{model.pk}/versions/{version.pk}/promote").status_code == 404
    assert api.get(f"/api/ml/models/{model.pk}/versions/{version.pk}/download").status_code == 404
    assert user_api.get(f"/api/ml/models/{other.pk}/versions").status_code == 404


def test_artifact_uploads_may_exceed_the_json_body_limit(api, model, settings):
    settings.CNET_MAX_UPLOAD_BYTES = 4 * 1024 * 1024
    data = b"\0" * (2 * 1024 * 1024)  # twice the 1 MiB JSON limit
    up = api.post(f"/api/ml/models/{model.pk}/versions", {"file": SimpleUploadedFile("big.joblib", data)},
                  format="multipart")
    assert up.status_code == 201, up.content
    assert up.data["size_bytes"] == len(data)
    too_big = api.post(f"/api/ml/models/{model.pk}/versions",
                       {"file": SimpleUploadedFile("huge.joblib", b"\0" * (5 * 1024 * 1024))}, format="multipart")
    assert too_big.status_code == 413


def test_the_api_and_the_console_show_the_same_status_word(api, staff_client, model):
    def shown() -> str:
        word = api.get(f"/api/ml/models/{model.pk}").data["status"]
        detail = staff_client.get(f"/admin/mlmodels/mlmodel/{model.pk}/change/").content.decode()
        listing = staff_client.get("/admin/mlmodels/mlmodel/").content.decode()
        assert f'data-status="{word}">{word}</span>' in detail
        assert f'<span class="badge s-{word}">{word}</span>' in listing
        return word

    assert shown() == "created"
    model_version_create(model=model, data=b"artifact", filename="lr.joblib", source="upload")
    assert shown() == "ready"
    make_node("local", capabilities=ML_NODE_CAPABILITIES)
    model.refresh_from_db()
    run = model_serve(model=model)
    assert shown() == "ready"  # placed, not answering yet
    workload_transition(workload_id=run.workload_id, to=WorkloadStatus.RUNNING)
    assert shown() == "serving"
