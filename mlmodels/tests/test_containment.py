"""Issue 15, point 4: models can't reach the agent. Through the API, as a user without staff
rights, on real agents with real processes: predictions and evaluations run as the workload (its
own uid under a root agent, its cgroups), model servers answer only their run's secret, and a
serving port must lie in the range and be nobody else's."""

import http.client
import io
import json
import os
import site as python_site
import socket
import sys
import tempfile
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from mlmodels.agentside import prediction_run
from mlmodels.models import MLModel, PredictionTask, TaskStatus
from tests.helpers import ML_NODE_CAPABILITIES, GiB, free_serving_port, supervise_until, workload_row
from workloads.executors.identity import uid_range
from workloads.executors.reach import others_may_run
from workloads.models import Workload, WorkloadStatus
from workloads.tests.containment.conftest import make_site_agent, needs_root, run_to_end, site  # noqa: F401

from .conftest import current, linear_artifact

pytestmark = pytest.mark.django_db(transaction=True)


def upload_model(user_api, user, data: bytes, name: str = "m") -> MLModel:
    """A model of ``user``'s with ``data`` uploaded as its first version, through the API."""
    model = MLModel.objects.create(owner=user, name=name, model_type="linear_regression", model_path="m.joblib")
    answer = user_api.post(f"/api/ml/models/{model.pk}/versions", {"file": SimpleUploadedFile("m.joblib", data)},
                           format="multipart")
    assert answer.status_code == 201, answer.content
    return model


def pickled(obj) -> bytes:
    import joblib

    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def serve(user_api, model: MLModel, node_id: str, port: int, expect: int = 201):
    answer = user_api.post(f"/api/ml/models/{model.pk}/serve", {"port": port, "node": node_id}, format="json")
    assert answer.status_code == expect, answer.content
    return answer.json()


def serving_workload(model: MLModel) -> Workload:
    return Workload.objects.get(ml_run__model=model, ml_run__kind="serving")


def direct(port: int, method: str, path: str, *, headers: dict | None = None, body: dict | None = None):
    """A request straight to a model server, as anyone on the network could send it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def until_serving(agent, model: MLModel) -> Workload:
    """Start the model's server as the node's worker would, and drive the agent until it is
    recorded as serving (it answered its health check)."""
    agent.start(str(serving_workload(model).pk))
    return supervise_until(agent, lambda: (row := serving_workload(model)).runtime.get("serving") and row,
                           timeout=60, message="the model server's endpoint recorded")


# --- ports ------------------------------------------------------------------------------------
def test_serving_on_the_control_planes_or_the_brokers_port_or_outside_the_range_is_refused_at_submit(
        user_api, user, agent, settings):
    settings.CELERY_BROKER_URL = "redis://10.0.0.2:9400/0"
    settings.CNET_SERVER_URL = "http://cnet.example.org:9500"
    model = upload_model(user_api, user, linear_artifact())
    node_id = agent.config.node_id
    before = Workload.objects.count()
    for port, says in ((8080, "control plane"), (9500, "control plane"), (9400, "broker"), (5000, "9000-9999")):
        refused = serve(user_api, model, node_id, port, expect=400)
        assert says in refused["port"][0], refused
        seed_form = user_api.post("/api/workloads", {
            "name": "seed-000", "type": "mlmodel", "node": node_id, "requirements": {"cpu": 0.5, "memory": GiB},
            "config": {"model_path": "models/model.joblib", "model_type": "sklearn", "port": port}}, format="json")
        assert seed_form.status_code == 400 and says in seed_form.json()["config"]["port"][0], seed_form.content
    assert Workload.objects.count() == before  # nothing written


def test_a_port_another_active_server_holds_on_the_node_is_refused_at_submit(user_api, user, agent):
    model = upload_model(user_api, user, linear_artifact())
    port = free_serving_port()
    serve(user_api, model, agent.config.node_id, port)
    before = Workload.objects.count()
    refused = serve(user_api, model, agent.config.node_id, port, expect=400)
    assert f"port {port} is held on node {agent.config.node_id}" in refused["port"][0], refused
    assert Workload.objects.count() == before


def test_a_port_something_else_has_bound_fails_the_server_with_the_reason(user_api, user, agent):
    model = upload_model(user_api, user, linear_artifact())
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_serving_port()))
        squatter.listen()
        port = squatter.getsockname()[1]
        serve(user_api, model, agent.config.node_id, port)
        workload = serving_workload(model)
        row = run_to_end(agent, workload.pk)
    assert row.status == WorkloadStatus.FAILED
    assert f"port {port} on 127.0.0.1 is taken" in row.reason and "not started" in row.reason
    assert "pid" not in (row.runtime or {})  # no server process was started


# --- the secret and the health check ----------------------------------------------------------
def test_a_model_server_answers_only_its_runs_secret_and_the_control_planes_predict_works(
        user_api, user, agent):
    model = upload_model(user_api, user, linear_artifact())
    port = free_serving_port()
    serve(user_api, model, agent.config.node_id, port)
    row = until_serving(agent, model)
    assert row.runtime["serving"]["port"] == port

    assert direct(port, "POST", "/predict", body={"input_data": 5.5})[0] == 401
    assert direct(port, "POST", "/predict", body={"input_data": 5.5},
                  headers={"Authorization": "Bearer not-the-secret"})[0] == 401
    assert direct(port, "GET", "/health") == (200, {"status": "ok"})  # exempt, and says nothing
    shown = user_api.get(f"/api/workloads/{row.pk}").content.decode()
    assert "secret" not in shown.lower()  # the owner is not shown it either: only the control plane sends it

    answer = user_api.post(f"/api/ml/models/{model.pk}/predict", {"input_data": 5.5}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["prediction"] == pytest.approx(14.0)


def test_the_endpoint_is_recorded_only_once_the_server_answers_its_health_check(user_api, user, agent, tmp_path):
    from .broken_model import OpensLate

    gate, loading = tmp_path / "gate", tmp_path / "loading"
    model = upload_model(user_api, user, pickled(OpensLate(str(gate), str(loading))))
    serve(user_api, model, agent.config.node_id, free_serving_port())
    workload = serving_workload(model)
    agent.start(str(workload.pk))
    supervise_until(agent, loading.exists, timeout=30, message="the server began loading its artifact")
    agent.supervise_once()

    row = workload_row(workload.pk)
    assert row.status == WorkloadStatus.RUNNING and row.runtime["server"]["port"]
    assert "serving" not in row.runtime  # it does not answer yet: nothing is sent to it
    sync = user_api.post(f"/api/ml/models/{model.pk}/predict", {"input_data": 2, "mode": "sync"}, format="json")
    assert sync.status_code == 409, sync.content

    gate.touch()
    supervise_until(agent, lambda: workload_row(workload.pk).runtime.get("serving"), timeout=30,
                    message="the endpoint recorded once the server answers")
    answer = user_api.post(f"/api/ml/models/{model.pk}/predict", {"input_data": 2, "mode": "sync"}, format="json")
    assert answer.status_code == 200 and answer.json()["prediction"] == 4.0, answer.content


# --- as the workload: under a root agent, a uid of its own -----------------------------------------
def workload_python() -> tuple[str, str] | None:
    """An interpreter of this Python's version that workload uids can run, and the PYTHONPATH that
    gives it this environment's packages; None where there is none."""
    if others_may_run(sys.executable):
        return sys.executable, ""
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    packages = python_site.getsitepackages()[0]
    if os.path.exists(system) and others_may_run(system) and others_may_run(os.path.join(packages, "x")):
        return system, packages
    return None


@pytest.fixture
def isolated_ml_agent(make_site_agent, settings, monkeypatch):  # noqa: F811 - the containment fixture
    """A root agent whose workloads run as uids of their own, running models with a Python those
    uids can run."""
    python = workload_python()
    if python is None:
        pytest.skip("no Python of this version that workload uids can run")
    settings.CNET_ML_PYTHON = python[0]
    if python[1]:
        monkeypatch.setenv("PYTHONPATH", python[1])
    agent = make_site_agent(capabilities=ML_NODE_CAPABILITIES, cpu=4, memory=8 * GiB)
    with current(agent):
        yield agent


@pytest.fixture
def marker_dir():
    folder = Path(tempfile.mkdtemp(prefix="cnet-marker-"))
    folder.chmod(0o1777)  # any workload uid may write its marker here
    yield folder
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


@needs_root
def test_an_artifact_whose_unpickling_writes_a_marker_never_runs_inside_the_agent(
        user_api, user, isolated_ml_agent, marker_dir, monkeypatch):
    from .broken_model import WritesMarker

    monkeypatch.setenv("CNET_PROBE_SECRET", "agent-only")  # what the agent's own environment holds
    marker = marker_dir / "marker.json"
    model = upload_model(user_api, user, pickled(WritesMarker(str(marker))))
    asked = user_api.post(f"/api/ml/models/{model.pk}/predict", {"input_data": 1}, format="json")
    assert asked.status_code == 202, asked.content

    assert prediction_run(isolated_ml_agent, asked.json()["prediction_task_id"])  # as the node's worker runs it
    task = PredictionTask.objects.get(pk=asked.json()["prediction_task_id"])
    assert task.status == TaskStatus.FAILED and task.error_status == 422, task.error  # it is not a model
    ran = json.loads(marker.read_text())
    assert ran["pid"] != os.getpid()  # not in the agent (this process)
    assert ran["uid"] != 0 and ran["uid"] in uid_range(settings.CNET_WORKLOAD_UID_RANGE)
    assert not {"CNET_PROBE_SECRET", "SECRET_KEY", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"} & set(ran["environ"])
    assert ran["ppid"] == os.getpid() and ran["parent_environ"] == "PermissionError"  # the agent's is closed to it
    assert not list(isolated_ml_agent.context.leases("uids").owners())  # its uid went back


@needs_root
def test_evaluate_runs_as_the_training_did_same_uid_same_cgroup(user_api, user, isolated_ml_agent, site):  # noqa: F811
    (site / "examples" / "ml" / "probe.py").write_text(PROBE_SCRIPT)
    deployed = user_api.post("/api/ml/models", {
        "name": "probe", "model_type": "probe", "model_path": "models/probe.bin",
        "script_path": "examples/ml/probe.py", "command": "python3",
        "args": ["examples/ml/probe.py", "train", "models/probe.bin"], "working_dir": ".",
        "node": isolated_ml_agent.config.node_id, "resources": {"cpu_limit": 0.5, "memory_limit": 512_000_000},
    }, format="json")
    assert deployed.status_code == 201, deployed.content
    training_id = str(Workload.objects.get(ml_run__model_id=deployed.json()["id"], ml_run__kind="training").pk)

    row = run_to_end(isolated_ml_agent, training_id, timeout=60)
    assert row.status == WorkloadStatus.SUCCEEDED, row.reason
    logs = user_api.get(f"/api/workloads/{training_id}/logs").json()["logs"]
    steps = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in logs.splitlines()
             if line.startswith(("TRAIN ", "EVAL "))}
    assert steps["TRAIN"]["uid"] != 0 and steps["TRAIN"]["uid"] == steps["EVAL"]["uid"] == row.runtime["uid"]
    assert training_id in steps["TRAIN"]["cgroup"] and steps["EVAL"]["cgroup"] == steps["TRAIN"]["cgroup"]
    model = MLModel.objects.get(pk=deployed.json()["id"])
    assert model.promoted_version.metrics == {"r2": 1.0}  # evaluate's metrics, read from its workspace's run


@needs_root
def test_a_model_server_runs_as_its_own_uid_and_answers_only_the_control_plane(user_api, user, isolated_ml_agent):
    model = upload_model(user_api, user, linear_artifact())
    port = free_serving_port()
    serve(user_api, model, isolated_ml_agent.config.node_id, port)
    row = until_serving(isolated_ml_agent, model)
    assert row.runtime["uid"] != 0  # the registry's artifact was copied where its uid reads it
    assert direct(port, "POST", "/predict", body={"input_data": 1})[0] == 401
    answer = user_api.post(f"/api/ml/models/{model.pk}/predict", {"input_data": 1}, format="json")
    assert answer.status_code == 200 and answer.json()["prediction"] == pytest.approx(5.0), answer.content


PROBE_SCRIPT = '''
import json
import os
import sys


def where():
    pids = [line for line in open("/proc/self/cgroup").read().splitlines() if ":pids:" in line]
    return {"uid": os.getuid(), "cgroup": pids[0].split(":", 2)[2] if pids else ""}


if sys.argv[1] == "train":
    with open(sys.argv[2], "wb") as artifact:
        artifact.write(b"not really a model")
    print("TRAIN " + json.dumps(where()))
else:
    print("EVAL " + json.dumps(where()))
    print(json.dumps({"metrics": {"r2": 1.0}}))
'''
