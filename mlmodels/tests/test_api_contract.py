"""The seed's ML API, with the seed's own request bodies (auth header aside)."""

import copy
from datetime import UTC, datetime

import pytest
import time_machine

from mlmodels.models import MLModel, ModelRun
from mlmodels.services import model_version_create, prediction_task_create
from nodes.resources import MILLICORES_PER_CORE
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_logs_append

SEED_LINEAR = {
    "name": "linear-regression-model",
    "model_type": "linear_regression",
    "model_path": "models/linear_regression_model.joblib",
    "script_path": "examples/ml_models/simple_linear_regression.py",
    "command": "python3",
    "args": ["examples/ml_models/simple_linear_regression.py", "train", "models/linear_regression_model.joblib",
             "1000"],
    "working_dir": ".",
    "env": {"PYTHONPATH": "examples/ml_models"},
    "resources": {"cpu_limit": 1.0, "memory_limit": 512000000, "disk_limit": 1000000000},
}
SEED_NEURAL = {
    "name": "neural-network-model",
    "model_type": "neural_network",
    "model_path": "models/neural_network_model.h5",
    "script_path": "examples/ml_models/neural_network.py",
    "command": "python3",
    "args": ["examples/ml_models/neural_network.py", "train", "models/neural_network_model.h5", "1000", "50"],
    "working_dir": ".",
    "env": {"PYTHONPATH": "examples/ml_models"},
    "resources": {"cpu_limit": 2.0, "memory_limit": 1024000000, "disk_limit": 2000000000},
}


@pytest.mark.parametrize("body", [SEED_LINEAR, SEED_NEURAL], ids=["linear", "neural"])
def test_deploy_seed_body_runs_training_as_a_placed_mlmodel_workload(api, node, body):
    response = api.post("/api/ml/models", body, format="json")
    assert response.status_code == 201, response.data
    data = response.data
    assert data["name"] == body["name"] and data["type"] == "ml_model"
    assert data["command"] == "python3" and data["args"] == body["args"] and data["working_dir"] == "."
    assert data["env"] == {**body["env"], "MODEL_PATH": body["model_path"], "MODEL_TYPE": body["model_type"]}
    assert data["resources"] == body["resources"]
    assert data["status"] == "scheduled" and data["created_at"] and "started_at" in data
    run = ModelRun.objects.get(model_id=data["id"])
    workload = run.workload
    assert workload.type == "mlmodel" and workload.node_id == node.pk
    assert workload.cpu_millicores == round(body["resources"]["cpu_limit"] * MILLICORES_PER_CORE)
    assert workload.memory_bytes == body["resources"]["memory_limit"]
    assert workload.storage_bytes == body["resources"]["disk_limit"]
    assert workload.config["env"]["MODEL_PATH"] == body["model_path"]
    assert workload.config["env"]["MODEL_TYPE"] == body["model_type"]


def test_list_is_a_plain_array_with_the_seed_fields(api, node, django_assert_max_num_queries):
    for i in range(3):
        api.post("/api/ml/models", {**SEED_LINEAR, "name": f"m{i}"}, format="json")
    with django_assert_max_num_queries(4):
        response = api.get("/api/ml/models")
    assert response.status_code == 200 and isinstance(response.data, list) and len(response.data) == 3
    for item in response.data:
        assert {"id", "name", "type", "status", "command", "args", "env", "working_dir", "resources",
                "created_at", "started_at"} <= set(item)
        assert set(item["resources"]) == {"cpu_limit", "memory_limit", "disk_limit"}


def test_get_and_delete_stop_the_training_run(api, node):
    model_id = api.post("/api/ml/models", SEED_LINEAR, format="json").data["id"]
    assert api.get(f"/api/ml/models/{model_id}").data["id"] == model_id
    workload_id = ModelRun.objects.get(model_id=model_id).workload_id
    assert api.delete(f"/api/ml/models/{model_id}").status_code == 204
    assert not MLModel.objects.filter(pk=model_id).exists()
    assert Workload.objects.get(pk=workload_id).status == WorkloadStatus.STOPPED
    assert api.get(f"/api/ml/models/{model_id}").status_code == 404


def test_logs_and_tasks_follow_the_seed(api, node):
    model_id = api.post("/api/ml/models", SEED_LINEAR, format="json").data["id"]
    logs = api.get(f"/api/ml/models/{model_id}/logs?lines=100")
    assert logs.status_code == 200 and logs.data["lines"] == [] and "logs" in logs.data
    assert api.get(f"/api/ml/models/{model_id}/logs?lines=-1").status_code == 400
    tasks = api.get("/api/tasks")
    assert tasks.status_code == 200 and isinstance(tasks.data, list)
    assert [t["id"] for t in tasks.data] == [str(ModelRun.objects.get(model_id=model_id).workload_id)]
    assert all("log_file" in t and "log" in t for t in tasks.data)  # jq '.[].log_file'
    assert api.get(f"/api/tasks/{tasks.data[0]['id']}").data["kind"] == "training"


def test_tasks_are_paged_by_the_database_newest_first_across_both_kinds(api, admin_user, node,
                                                                          django_assert_max_num_queries):
    """Training runs and prediction tasks interleaved in time; every page in one order, whatever its size."""
    expected = []
    with time_machine.travel(datetime(2026, 12, 1, 12, 0, tzinfo=UTC), tick=False) as clock:
        model = MLModel.objects.get(pk=api.post("/api/ml/models", SEED_LINEAR, format="json").data["id"])
        expected.append(str(ModelRun.objects.get(model=model).workload_id))
        model_version_create(model=model, data=b"artifact", filename="lr.joblib", source="upload")
        model.refresh_from_db()
        for i in range(6):
            clock.shift(1)
            expected.append(str(prediction_task_create(model=model, input_data=i, owner=admin_user).pk))
            clock.shift(1)
            body = {**SEED_LINEAR, "name": f"m{i}", "resources": {"cpu_limit": 0.1}}
            expected.append(str(ModelRun.objects.get(model_id=api.post("/api/ml/models", body, format="json")
                                                     .data["id"]).workload_id))
    expected.reverse()  # newest first

    with django_assert_max_num_queries(6):  # auth, page, count, workloads, predictions, log tails
        response = api.get("/api/tasks")
    assert [t["id"] for t in response.data] == expected and response["X-Total-Count"] == "13"
    assert {t["kind"] for t in response.data} == {"training", "prediction"}
    with django_assert_max_num_queries(6):
        page = api.get("/api/tasks?limit=5&offset=3")
    assert [t["id"] for t in page.data] == expected[3:8] and page["X-Total-Count"] == "13"
    assert api.get("/api/tasks?offset=13").data == []


def test_each_task_log_is_its_last_lines_read_from_the_database(api, node):
    model_id = api.post("/api/ml/models", SEED_LINEAR, format="json").data["id"]
    workload_id = ModelRun.objects.get(model_id=model_id).workload_id
    workload_logs_append(workload_id=workload_id, chunks=[(0, "stdout", "one\ntwo\n"), (1, "stdout", "three\n"),
                                                          (2, "stderr", "four\nfive")])
    assert api.get("/api/tasks?lines=3").data[0]["log"] == "three\nfour\nfive"
    assert api.get("/api/tasks?lines=100").data[0]["log"] == "one\ntwo\nthree\nfour\nfive"
    assert api.get("/api/tasks?lines=0").data[0]["log"] == ""
    assert api.get(f"/api/tasks/{workload_id}?lines=1").data["log"] == "five"
    assert api.get(f"/api/ml/models/{model_id}/logs?lines=2").data["lines"] == ["four", "five"]


@pytest.mark.parametrize("query", ["limit=1001", "limit=x", "offset=-1", "lines=-1"])
def test_bad_task_paging_is_400_naming_the_parameter(api, node, query):
    response = api.get(f"/api/tasks?{query}")
    assert response.status_code == 400 and response.data["detail"].startswith(query.split("=")[0])


def test_a_deploy_naming_no_command_trains_its_script_with_python3(api, node):
    body = {key: value for key, value in SEED_LINEAR.items() if key not in ("command", "args")}
    data = api.post("/api/ml/models", body, format="json").data
    args = [SEED_LINEAR["script_path"], "train", SEED_LINEAR["model_path"]]
    assert data["command"] == "python3" and data["args"] == args
    assert ModelRun.objects.get(model_id=data["id"]).workload.config["args"] == args


def test_a_deploy_naming_neither_command_nor_script_is_refused_whole(api, node):
    body = {key: value for key, value in SEED_LINEAR.items() if key not in ("command", "args", "script_path")}
    response = api.post("/api/ml/models", body, format="json")
    assert response.status_code == 400 and response.data["detail"].startswith("command")
    assert not MLModel.objects.exists() and not Workload.objects.exists()


@pytest.mark.parametrize("change, field", [
    ({"name": 5}, "name"),
    ({"model_path": "../outside.joblib"}, "model_path"),
    ({"model_path": "/etc/passwd"}, "model_path"),
    ({"working_dir": "../.."}, "working_dir"),
    ({"args": "train"}, "args"),
    ({"env": {"A": 1}}, "env"),
    ({"resources": {"cpu_limit": 0}}, "resources"),
    ({"resources": {"cpu_limit": 0.0001}}, "resources"),  # under one millicore
    ({"resources": {"cpu_limit": 1, "memory_limit": "512MB"}}, "resources"),
    ({"resources": {"gpu": 1}}, "resources"),
    ({"resources": {"cpu_limit": 64.0}}, "resources"),  # no node could ever hold it
    ({"env": {"MODEL_PATH": "elsewhere.joblib"}}, "env"),
    ({"colour": "blue"}, "colour"),
    ({"node": "no-such-node"}, "node"),
    ({"model_type": "a b"}, "model_type"),
])
def test_bad_deploy_is_refused_whole_naming_the_field(api, node, change, field):
    body = {**copy.deepcopy(SEED_LINEAR), **change}
    response = api.post("/api/ml/models", body, format="json")
    assert response.status_code == 400, response.data
    assert response.data["detail"].startswith(field), response.data
    assert not MLModel.objects.exists() and not Workload.objects.exists()


def test_missing_required_fields_are_named(api, node):
    response = api.post("/api/ml/models", {"name": "x"}, format="json")
    assert response.status_code == 400 and "model_path" in response.data


def test_users_see_only_their_own_models(api, user_api, node):
    model_id = api.post("/api/ml/models", SEED_LINEAR, format="json").data["id"]
    assert user_api.get("/api/ml/models").data == []
    assert user_api.get(f"/api/ml/models/{model_id}").status_code == 404
    assert user_api.post(f"/api/ml/models/{model_id}/predict", {"input_data": 1}, format="json").status_code == 404
    assert user_api.get("/api/tasks").data == []


def test_unauthenticated_is_refused(client, node):
    assert client.get("/api/ml/models").status_code in (401, 403)
    assert client.get("/api/tasks").status_code in (401, 403)


def test_the_model_list_filters_by_name_and_type(api, node):
    for body in (SEED_LINEAR, SEED_NEURAL):
        assert api.post("/api/ml/models", body, format="json").status_code == 201
    by_type = api.get("/api/ml/models", {"model_type": SEED_NEURAL["model_type"]}).data
    by_name = api.get("/api/ml/models", {"name": SEED_LINEAR["name"]}).data
    assert [m["name"] for m in by_type] == [SEED_NEURAL["name"]]
    assert [m["name"] for m in by_name] == [SEED_LINEAR["name"]]
