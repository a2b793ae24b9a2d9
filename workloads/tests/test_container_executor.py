"""Container workloads against a real Docker engine, driven by a real in-process Agent.

Needs a reachable engine (``dockerd``) and the local test image, which the session fixture
builds with ``tests/containers/build_image.sh`` (a static busybox, ``docker import``ed:
nothing can be pulled here). Without an engine every test here skips and says why, unless
``CNET_REQUIRE_CONTAINER_ENGINE=1`` (set by ``.ci/run``), where that is a failure.
"""

import os
import subprocess
import uuid
from pathlib import Path

import docker.errors
import pytest

from nodes.resources import Resources
from tests.helpers import GiB, in_process_agents, wait_for
from workloads.agent.agent import Agent
from workloads.executors.base import ExecutorError
from workloads.executors.container.engine import detect_container_engine
from workloads.executors.container.executor import LABEL_NODE, LABEL_WORKLOAD, ContainerExecutor, container_name
from workloads.executors.container_kind import ContainerConfigSerializer
from workloads.models import TERMINAL, Workload, WorkloadEvent, WorkloadLog, WorkloadStatus
from workloads.services import workload_delete, workload_stop, workload_submit, workload_transition

S = WorkloadStatus
MiB = 1024**2
IMAGE = "cnet-test/busybox:latest"
BUILD_IMAGE = Path(__file__).resolve().parents[2] / "tests" / "containers" / "build_image.sh"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as error:
        message = (f"no Docker engine reachable ({error}); install docker.io and start dockerd "
                   "(.ci/run does both) to run the container tests")
        if os.environ.get("CNET_REQUIRE_CONTAINER_ENGINE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    build = subprocess.run([str(BUILD_IMAGE), IMAGE], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, f"building {IMAGE} failed: {build.stderr}"
    yield client
    client.close()


@pytest.fixture
def make_agent(docker_client, tmp_path, live_server):
    """Agents for one fresh node id; its containers are removed afterwards whatever happened."""
    node_id = f"ct-{uuid.uuid4().hex[:8]}"
    with in_process_agents(live_server.url) as make_in_process:

        def make(*, data_dir: Path | None = None, grace: float = 2.0) -> Agent:
            (tmp_path / "work").mkdir(exist_ok=True)
            agent = make_in_process(
                node_id, cpu=2, memory=4 * GiB, storage=10 * GiB, work_dir=tmp_path / "work",
                data_dir=data_dir or tmp_path / "data", stop_grace_seconds=grace,
                capabilities={"process": {"available": True}, "container": detect_container_engine(), "gpus": []},
            )
            agent.register()
            agent.reconcile()
            return agent

        make.node_id = node_id
        yield make
    for container in docker_client.api.containers(all=True, filters={"label": f"{LABEL_NODE}={node_id}"}):
        try:
            docker_client.api.remove_container(container["Id"], force=True)
        except docker.errors.NotFound:
            pass  # removed by the agent meanwhile


def submit(node_id: str, config: dict, *, memory: int = 64 * MiB, cpu: int = 500) -> Workload:
    """Through the API's own validation, then the submit service (places it on ``node_id``)."""
    serializer = ContainerConfigSerializer(data=config)
    assert serializer.is_valid(), serializer.errors
    workload = workload_submit(owner=None, name="c", type="container", config=dict(serializer.validated_data),
                               requirements=Resources(cpu=cpu, gpu=0, memory=memory, storage=0), node=node_id)
    assert workload.status == S.SCHEDULED, workload.reason
    return workload


def status(workload) -> str:
    return Workload.objects.values_list("status", flat=True).get(pk=workload.pk)


def supervise_until(agent: Agent, workload, predicate, timeout: float = 30.0):
    def step():
        agent.supervise_once()
        return predicate()
    return wait_for(step, timeout=timeout, message=f"workload {workload.pk}")


def run_to_end(agent: Agent, workload, timeout: float = 30.0) -> Workload:
    agent.start(str(workload.pk))
    supervise_until(agent, workload, lambda: status(workload) in TERMINAL, timeout)
    return Workload.objects.get(pk=workload.pk)


def logs(workload, stream: str) -> str:
    return "".join(WorkloadLog.objects.filter(workload_id=workload.pk, stream=stream).values_list("text", flat=True))


def sh(script: str) -> dict:
    return {"image": IMAGE, "command": ["sh"], "args": ["-c", script]}


def test_output_reaches_logs_per_stream_and_exit_code_fails_it(make_agent):
    agent = make_agent()
    workload = run_to_end(agent, submit(make_agent.node_id, sh("echo out-line; echo err-line >&2; exit 3")))
    assert workload.status == S.FAILED
    assert workload.exit_code == 3
    assert workload.reason == "exited with code 3"
    assert logs(workload, "stdout") == "out-line\n"
    assert logs(workload, "stderr") == "err-line\n"


def test_zero_exit_succeeds_and_the_container_is_removed_after(make_agent, docker_client):
    agent = make_agent()
    workload = run_to_end(agent, submit(make_agent.node_id, {"image": IMAGE, "command": "true"}))
    assert (workload.status, workload.exit_code) == (S.SUCCEEDED, 0)
    assert docker_client.api.containers(all=True, filters={"label": f"{LABEL_WORKLOAD}={workload.pk}"}) == []


def test_container_is_named_labelled_limited_and_unprivileged(make_agent, docker_client):
    agent = make_agent()
    config = {**sh("echo \"$GREETING\"; pwd; sleep 300"), "env": {"GREETING": "hello"},
              "working_dir": "/tmp", "ports": ["18551:8080", 9000]}
    workload = submit(make_agent.node_id, config, memory=32 * MiB, cpu=250)
    agent.start(str(workload.pk))
    supervise_until(agent, workload, lambda: "/tmp" in logs(workload, "stdout"))
    assert logs(workload, "stdout") == "hello\n/tmp\n"

    container = docker_client.containers.get(container_name(make_agent.node_id, str(workload.pk)))
    assert container.labels[LABEL_WORKLOAD] == str(workload.pk)
    assert container.labels[LABEL_NODE] == make_agent.node_id
    host = container.attrs["HostConfig"]
    assert host["Memory"] == 32 * MiB
    assert host["NanoCpus"] == 250_000_000
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False
    assert host["NetworkMode"] != "host"
    assert host["PortBindings"]["8080/tcp"][0]["HostPort"] == "18551"
    assert "9000/tcp" in host["PortBindings"]
    runtime = Workload.objects.get(pk=workload.pk).runtime
    assert runtime["container_id"] == container.id
    assert set(runtime["ports"]["8080/tcp"]) == {"18551"}  # IPv4 and IPv6 alike
    assert runtime["ports"]["9000/tcp"][0].isdigit()  # the host port the engine chose


def test_oom_kill_fails_with_memory_limit_exceeded(make_agent):
    agent = make_agent()
    config = {"image": IMAGE, "command": ["dd"], "args": ["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]}
    workload = run_to_end(agent, submit(make_agent.node_id, config, memory=16 * MiB))
    assert workload.status == S.FAILED
    assert workload.reason == "memory limit exceeded"
    assert workload.exit_code == 137


def test_stop_is_graceful_when_the_container_obeys_sigterm(make_agent):
    agent = make_agent(grace=30)
    workload = submit(make_agent.node_id, sh("trap 'echo got-term; exit 0' TERM; while true; do sleep 0.1; done"))
    agent.start(str(workload.pk))
    supervise_until(agent, workload, lambda: status(workload) == S.RUNNING)
    workload_stop(workload=Workload.objects.get(pk=workload.pk))
    agent.stop(str(workload.pk))  # what the node queue's stop task does
    supervise_until(agent, workload, lambda: status(workload) == S.STOPPED, timeout=20)
    assert "got-term" in logs(workload, "stdout")  # ended by SIGTERM, long before the 30 s kill


def test_stop_kills_a_container_that_ignores_sigterm_after_the_grace_period(make_agent):
    agent = make_agent(grace=1)
    workload = submit(make_agent.node_id, sh("trap '' TERM; echo ready; while true; do sleep 0.1; done"))
    agent.start(str(workload.pk))
    supervise_until(agent, workload, lambda: "ready" in logs(workload, "stdout"))
    workload_stop(workload=Workload.objects.get(pk=workload.pk))
    agent.stop(str(workload.pk))
    supervise_until(agent, workload, lambda: status(workload) == S.STOPPED, timeout=20)
    ended = Workload.objects.get(pk=workload.pk)
    assert ended.exit_code == 137  # SIGKILL
    assert ended.reason.startswith("stopped (")


def test_seed_example_image_missing_here_fails_naming_the_image(make_agent):
    agent = make_agent()
    seed = {"image": "nginx:alpine", "command": ["nginx"], "args": ["-g", "daemon off;"]}
    workload = run_to_end(agent, submit(make_agent.node_id, seed, memory=512 * MiB, cpu=1000))
    assert workload.status == S.FAILED
    assert "image not found" in workload.reason
    assert "'nginx:alpine'" in workload.reason


def test_pull_policy_never_does_not_pull_and_names_the_image(make_agent):
    agent = make_agent()
    workload = run_to_end(agent, submit(make_agent.node_id, {"image": "cnet-test/absent:1", "pull_policy": "never"}))
    assert workload.status == S.FAILED
    assert "'cnet-test/absent:1'" in workload.reason and "pull_policy is never" in workload.reason


def test_pull_policy_always_fails_naming_the_image_when_the_registry_cannot_be_reached(make_agent):
    agent = make_agent()
    workload = run_to_end(agent, submit(make_agent.node_id, {"image": IMAGE, "pull_policy": "always"}))
    assert workload.status == S.FAILED
    assert f"{IMAGE!r} could not be pulled (pull_policy always)" in workload.reason


def test_a_missing_command_fails_with_127_and_says_why_in_its_logs(make_agent):
    agent = make_agent()
    workload = run_to_end(agent, submit(make_agent.node_id, {"image": IMAGE, "command": ["no-such-binary"]}))
    assert (workload.status, workload.exit_code) == (S.FAILED, 127)  # as a shell reports it
    assert "no-such-binary" in logs(workload, "stderr")


def test_executor_refuses_unsafe_rows_the_api_would_have_refused(make_agent):
    """A row written around the API (admin, shell) still cannot get a privileged container."""
    agent = make_agent()
    for config, words in [
        ({"image": IMAGE, "privileged": True}, "privileged"),
        ({"image": IMAGE, "network_mode": "host"}, "network_mode 'host'"),
        ({"image": IMAGE, "volumes": [{"source": "/etc", "target": "/host-etc"}]}, "host bind mount '/etc'"),
    ]:
        workload = submit(make_agent.node_id, {"image": IMAGE})
        Workload.objects.filter(pk=workload.pk).update(config=config)
        workload = run_to_end(agent, workload)
        assert workload.status == S.FAILED
        assert words in workload.reason


def test_delete_removes_the_running_container(make_agent, docker_client):
    agent = make_agent()
    workload = submit(make_agent.node_id, sh("sleep 300"))
    agent.start(str(workload.pk))
    name = container_name(make_agent.node_id, str(workload.pk))
    assert docker_client.containers.get(name).status == "running"
    workload_delete(workload=Workload.objects.get(pk=workload.pk))

    def gone():
        agent.heartbeat_once()  # the answer's "kill" names it: the agent kills and removes the container
        return not docker_client.api.containers(all=True, filters={"name": name})
    wait_for(gone, timeout=20, message="container removed")


def test_restarted_agent_readopts_a_running_container_and_ships_each_line_once(make_agent, tmp_path,
                                                                               docker_client):
    first = make_agent(data_dir=tmp_path / "first")
    workload = submit(make_agent.node_id, sh("echo before; while [ ! -f /tmp/go ]; do sleep 0.05; done; echo after"))
    first.start(str(workload.pk))
    supervise_until(first, workload, lambda: "before" in logs(workload, "stdout"))
    # The first agent dies here without a word; a new one starts on the same node (with a
    # fresh data folder, so only the database and the engine say what ran).
    second = make_agent(data_dir=tmp_path / "second")
    assert str(workload.pk) in second.handles
    assert WorkloadEvent.objects.filter(workload_id=workload.pk, reason__startswith="re-adopted").exists()
    assert status(workload) == S.RUNNING

    docker_client.containers.get(container_name(make_agent.node_id, str(workload.pk))).exec_run(["touch", "/tmp/go"])
    supervise_until(second, workload, lambda: status(workload) in TERMINAL)
    ended = Workload.objects.get(pk=workload.pk)
    assert (ended.status, ended.exit_code) == (S.SUCCEEDED, 0)
    assert logs(workload, "stdout") == "before\nafter\n"


def test_restarted_agent_reports_the_real_exit_of_a_container_that_ended_while_it_was_down(make_agent, tmp_path):
    first = make_agent(data_dir=tmp_path / "first")
    workload = submit(make_agent.node_id, sh("echo bye; exit 4"))
    first.start(str(workload.pk))  # never supervised: the agent "dies" at once
    agent_handle = first.handles[str(workload.pk)].handle
    wait_for(lambda: agent_handle.poll() is not None, timeout=20, message="container ended")
    second = make_agent(data_dir=tmp_path / "first")
    supervise_until(second, workload, lambda: status(workload) in TERMINAL)
    ended = Workload.objects.get(pk=workload.pk)
    assert (ended.status, ended.exit_code) == (S.FAILED, 4)
    assert logs(workload, "stdout") == "bye\n"


def test_restarted_agent_removes_containers_of_work_no_longer_running_here(make_agent, docker_client, tmp_path):
    first = make_agent(data_dir=tmp_path / "first")
    lost = submit(make_agent.node_id, sh("sleep 300"))
    kept = submit(make_agent.node_id, sh("sleep 300"))
    first.start(str(lost.pk))
    first.start(str(kept.pk))
    # While the agent was away its node was declared offline and this workload lost.
    assert workload_transition(workload_id=lost.pk, to=S.LOST, reason="node offline")
    # And a container for a workload the database never heard of (a deleted row).
    stray = docker_client.containers.create(IMAGE, ["sleep", "300"], name=f"stray-{make_agent.node_id}",
                                            labels={LABEL_NODE: make_agent.node_id, LABEL_WORKLOAD: str(uuid.uuid4())})
    stray.start()

    second = make_agent(data_dir=tmp_path / "second")
    remaining = docker_client.api.containers(all=True, filters={"label": f"{LABEL_NODE}={make_agent.node_id}"})
    assert [c["Labels"][LABEL_WORKLOAD] for c in remaining] == [str(kept.pk)]
    assert set(second.handles) == {str(kept.pk)}


def test_adopt_finds_nothing_for_a_workload_without_a_container(make_agent):
    agent = make_agent()
    workload = submit(make_agent.node_id, {"image": IMAGE})
    assert ContainerExecutor().adopt(Workload.objects.get(pk=workload.pk), agent.context) is None


def test_gpu_request_on_a_node_without_gpus_is_refused_by_the_executor(make_agent):
    agent = make_agent()
    workload = submit(make_agent.node_id, {"image": IMAGE})
    Workload.objects.filter(pk=workload.pk).update(gpu_count=1)
    with pytest.raises(ExecutorError, match="needs 1 GPU"):
        ContainerExecutor().start(Workload.objects.get(pk=workload.pk), agent.context)


def test_engine_capability_is_reported_with_its_version(docker_client):
    capability = detect_container_engine()
    assert capability["available"] is True
    assert capability["version"] == docker_client.version()["Version"]


def test_engine_capability_is_unavailable_when_no_engine_answers(monkeypatch, tmp_path):
    # An environment without an engine, not a mock: the SDK really tries this socket.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    capability = detect_container_engine()
    assert capability["available"] is False
    assert "no container engine reachable" in capability["reason"]
