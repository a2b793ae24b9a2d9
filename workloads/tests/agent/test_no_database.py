"""An agent needs no database: started with an unreachable DATABASE_URL it joins, runs work and
ships its output over the node API."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from nodes.resources import Resources
from nodes.services import join_token_create
from tests.helpers import kill_group, wait_for, wait_status
from workloads.models import WorkloadLog, WorkloadStatus
from workloads.services import workload_submit

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_agent_with_an_unreachable_database_joins_runs_work_and_ships_its_output(live_server, tmp_path):
    node_id = f"nodb-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DATABASE_URL": "postgres://nobody@127.0.0.1:9/nowhere", "CNET_DATA_DIR": str(tmp_path),
           "DJANGO_SETTINGS_MODULE": "cnetsite.settings"}
    argv = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "runagent", "--node-id", node_id,
            "--cpu", "1", "--memory", str(1024**3), "--storage", "0", "--server", live_server.url,
            "--join-token", join_token_create()]
    agent = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from nodes.models import Node
        wait_for(lambda: Node.objects.filter(node_id=node_id, status="ready").exists(), timeout=60,
                 message="the agent registered")
        workload = workload_submit(owner=None, name="nodb", type="process", node=node_id,
                                   config={"command": "echo", "args": ["shipped"]},
                                   requirements=Resources(cpu=100, gpu=0, memory=0, storage=0))
        wait_status(workload.pk, WorkloadStatus.SUCCEEDED, timeout=30)
        assert WorkloadLog.objects.filter(workload=workload, text="shipped\n").exists()
        assert (tmp_path / "agent" / f"{node_id}.credential").is_file()
    finally:
        kill_group(agent)
        output = agent.stdout.read().decode(errors="replace") if agent.stdout else ""
    assert "OperationalError" not in output, output[-3000:]
