"""End to end with a real agent process (``manage.py runagent``) that has no database (only the node API
and the test's broker): deploy the seed's linear regression, let it train, predict the seed's way,
serve it, predict sync."""

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from mlmodels.models import ModelRun, ModelVersion
from nodes.models import Node, NodeStatus
from nodes.services import join_token_create
from tests.helpers import free_port, wait_for
from workloads.models import Workload, WorkloadStatus

from .conftest import EXAMPLES
from .test_api_contract import SEED_LINEAR

REPO = Path(settings.BASE_DIR)
UNREACHABLE_DATABASE = "postgres://nobody@127.0.0.1:9/nowhere"


@pytest.fixture
def agent_process(live_server, tmp_path):
    node_id = f"e2e-ml-{secrets.token_hex(3)}"
    work_dir = tmp_path / "work"
    (work_dir / "examples").mkdir(parents=True)
    os.symlink(EXAMPLES, work_dir / "examples" / "ml_models")
    # The embedded broker is a folder under the data dir, so on it the agent shares the test's
    # (fresh per session); with Redis the agent gets a fresh data dir of its own.
    data_dir = settings.DATA_DIR if settings.CELERY_BROKER_URL.startswith("filesystem") else tmp_path / "data"
    serve_port = free_port()  # the one port the agent may give a model server
    # The agent holds no database: one it could reach would hide a path that still needs one.
    env = {**os.environ, "DATABASE_URL": UNREACHABLE_DATABASE, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
           "CNET_DATA_DIR": str(data_dir), "CNET_WORK_DIR": str(work_dir), "CNET_LOCAL_NODE_ID": node_id,
           "CNET_ML_SERVE_PORTS": f"{serve_port}-{serve_port}", "CNET_HEARTBEAT_SECONDS": "1",
           "CNET_STOP_GRACE_SECONDS": "2", "DJANGO_SETTINGS_MODULE": "cnetsite.settings", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "manage.py", "runagent", "--node-id", node_id, "--cpu", "2",
                             "--memory", str(4 * 1024**3), "--server", live_server.url,
                             "--join-token", join_token_create()],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: Node.objects.filter(node_id=node_id, status=NodeStatus.READY).exists() or proc.poll(),
                 timeout=60, message="agent registered")
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()
        proc.node_id = node_id
        proc.log_path = tmp_path / "agent.log"
        proc.serve_port = serve_port
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_seed_deploy_train_predict_serve_on_a_real_agent(api, agent_process):
    body = {**SEED_LINEAR, "node": agent_process.node_id}
    response = api.post("/api/ml/models", body, format="json")
    assert response.status_code == 201, response.data
    model_id = response.data["id"]
    workload_id = ModelRun.objects.get(model_id=model_id).workload_id

    def ended():
        return Workload.objects.get(pk=workload_id).status not in ("pending", "scheduled", "running")

    wait_for(ended, timeout=120, every=0.2, message="training ended")
    workload = Workload.objects.get(pk=workload_id)
    assert workload.status == WorkloadStatus.SUCCEEDED, (workload.reason, agent_process.log_path.read_text()[-3000:])
    version = ModelVersion.objects.get(workload_id=workload_id)
    assert version.metrics["r2"] > 0.95

    # The seed's predict, nothing serving yet: a prediction task, its result under /api/tasks/{id}.
    answer = api.post(f"/api/ml/models/{model_id}/predict", {"input_data": 5.5}, format="json")
    assert answer.status_code == 202 and answer.data["message"] == "Prediction task created"
    task_url = f"/api/tasks/{answer.data['prediction_task_id']}"
    # The agent's worker runs it: over the node API, in a one-shot process (never in the agent).
    task = wait_for(lambda: (data := api.get(task_url).data)["status"] == "succeeded" and data,
                    timeout=30, message="the agent ran the prediction")
    assert task["prediction"] == pytest.approx(14.0, abs=0.3)

    # Serve it on the agent's node and predict synchronously.
    served = api.post(f"/api/ml/models/{model_id}/serve", {}, format="json")
    assert served.status_code == 201, served.data

    def sync_prediction():
        reply = api.post(f"/api/ml/models/{model_id}/predict", {"input_data": 5.5, "mode": "sync"}, format="json")
        return reply if reply.status_code == 200 else None

    reply = wait_for(sync_prediction, timeout=60, every=0.2, message="sync prediction")
    assert reply.data["prediction"] == pytest.approx(14.0, abs=0.3)
    assert reply.data["served_by"] == agent_process.node_id
    assert api.get(f"/api/ml/models/{model_id}/serve").data[0]["port"] == agent_process.serve_port

    assert api.delete(f"/api/ml/models/{model_id}").status_code == 204
    serving_id = served.data["task_id"]
    wait_for(lambda: Workload.objects.get(pk=serving_id).status == WorkloadStatus.STOPPED, timeout=30,
             message="model server stopped")
    assert "OperationalError" not in agent_process.log_path.read_text()  # it never tried a database
