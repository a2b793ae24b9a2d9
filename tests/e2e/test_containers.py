"""Container workloads on the real cluster (conftest): API → broker → ``runagent`` → Docker.

Needs what the cluster needs (Postgres, Redis) and a Docker engine with the local test
image (built here by ``tests/containers/build_image.sh`` if missing); skips saying why.
"""

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import wait_for, wait_status
from workloads.models import WorkloadEvent, WorkloadStatus

from .conftest import MiB

S = WorkloadStatus
IMAGE = "cnet-test/busybox:latest"
BUILD_IMAGE = Path(__file__).resolve().parents[1] / "containers" / "build_image.sh"


@pytest.fixture(scope="module")
def engine():
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as error:
        message = f"no Docker engine reachable ({error}); install docker.io and start dockerd (.ci/run does both)"
        if os.environ.get("CNET_REQUIRE_CONTAINER_ENGINE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    subprocess.run([str(BUILD_IMAGE), IMAGE], check=True, timeout=120)
    created: list[str] = []
    client.created = created
    yield client
    for workload_id in created:  # whatever a failed test left behind
        for container in client.api.containers(all=True, filters={"label": f"cnet.workload_id={workload_id}"}):
            try:
                client.api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                pass
    client.close()


def submit(api, engine, *, node: str, config: dict, memory: int = 64 * MiB) -> str:
    body = {"name": "c", "type": "container", "node": node,
            "requirements": {"cpu": 0.25, "memory": memory}, "config": config}
    response = api.post("/api/workloads", body, format="json")
    assert response.status_code == 201, response.data
    engine.created.append(response.data["id"])
    return response.data["id"]


def logs(api, workload_id) -> list[str]:
    return api.get(f"/api/workloads/{workload_id}/logs").data["lines"]


def containers_of(engine, workload_id) -> list[dict]:
    return engine.api.containers(all=True, filters={"label": f"cnet.workload_id={workload_id}"})


def test_killed_agent_readopts_its_running_container_and_records_its_real_exit(api, cluster, engine):
    script = "echo before; while [ ! -f /tmp/go ]; do sleep 0.05; done; echo after; exit 5"
    workload_id = submit(api, engine, node="peer1", config={"image": IMAGE, "command": ["sh"], "args": ["-c", script]})
    wait_status(workload_id, S.RUNNING)
    wait_for(lambda: logs(api, workload_id) == ["before"], timeout=15, message="first output shipped")
    cluster.kill("peer1")  # kill -9: the container lives on in the engine
    [container] = containers_of(engine, workload_id)
    assert container["State"] == "running"
    assert container["Labels"]["cnet.node_id"] == "peer1"

    cluster.start_agent("peer1")
    wait_for(lambda: WorkloadEvent.objects.filter(workload_id=workload_id, reason__contains="re-adopted").exists(),
             timeout=15, message="re-adopted")
    engine.api.exec_start(engine.api.exec_create(container["Id"], ["touch", "/tmp/go"]))
    ended = wait_status(workload_id, S.SUCCEEDED, S.FAILED)
    assert (ended.status, ended.exit_code, ended.reason) == (S.FAILED, 5, "exited with code 5")
    assert logs(api, workload_id) == ["before", "after"]  # each line once
    wait_for(lambda: not containers_of(engine, workload_id), timeout=15, message="container removed")


def test_stop_through_the_api_stops_the_container_and_removes_it(api, cluster, engine):
    workload_id = submit(api, engine, node="peer2", config={"image": IMAGE, "command": ["sleep"], "args": ["300"]})
    wait_status(workload_id, S.RUNNING)
    assert api.post(f"/api/workloads/{workload_id}/stop").status_code in (200, 202)
    wait_status(workload_id, S.STOPPED)
    wait_for(lambda: not containers_of(engine, workload_id), timeout=15, message="container removed")


def test_seed_example_fails_cleanly_where_nginx_alpine_is_not_there(api, cluster, engine):
    if engine.api.images(name="nginx:alpine"):
        pytest.skip("nginx:alpine is present on this machine, so the seed example would run")
    seed = {"image": "nginx:alpine", "command": ["nginx"], "args": ["-g", "daemon off;"]}
    workload_id = submit(api, engine, node="peer2", config=seed, memory=128 * MiB)
    ended = wait_status(workload_id, S.FAILED, S.SUCCEEDED, S.RUNNING)
    assert ended.status == S.FAILED
    assert "image not found" in ended.reason and "'nginx:alpine'" in ended.reason
