"""Issue 15, point 5: containers can't reach the host or each other, and GPUs are assigned by
device id. The policy through the API as a user without staff rights; a real container on the
local engine for what the agent asks of it. No GPU here: the assignment is tested on a declared
inventory of two fake devices, for processes (CUDA_VISIBLE_DEVICES) and containers (device_ids)."""

import uuid

import pytest

from tests.helpers import make_node, wait_for
from workloads.container_policy import volume_allowed
from workloads.executors.base import AgentContext, ExecutorError
from workloads.executors.container.executor import ContainerExecutor, host_limits
from workloads.executors.limits import CgroupLimiter
from workloads.executors.process import ProcessExecutor
from workloads.models import Workload
from workloads.tests.test_container_executor import IMAGE, docker_client  # noqa: F401 - a fixture

FAKE_GPUS = [{"index": 0, "name": "fake"}, {"index": 1, "name": "fake"}]


def submit_container(api, config: dict):
    return api.post("/api/workloads", {"name": "c", "type": "container", "config": {"image": IMAGE, **config}},
                    format="json")


@pytest.mark.django_db
def test_a_volume_or_network_outside_the_allowlist_is_refused(user_api, settings):
    settings.CNET_CONTAINER_VOLUMES = ["datasets"]
    settings.CNET_CONTAINER_NETWORKS = ["bridge", "none", "cnet-jobs"]

    refused = submit_container(user_api, {"volumes": [{"source": "bobs-cache", "target": "/data"}]})
    assert refused.status_code == 400
    assert "bobs-cache" in str(refused.json()["config"]["volumes"])
    refused = submit_container(user_api, {"network_mode": "other-net"})
    assert refused.status_code == 400 and "other-net" in str(refused.json()["config"]["network_mode"])
    for mode in ("host", "container:abc"):
        assert submit_container(user_api, {"network_mode": mode}).status_code == 400
    assert not Workload.objects.exists()  # nothing written

    make_node("containers", capabilities={"container": {"available": True}})
    assert submit_container(user_api, {"volumes": [{"source": "datasets", "target": "/data"}],
                                       "network_mode": "cnet-jobs"}).status_code == 201


def test_a_named_volume_with_its_owners_prefix_is_theirs_alone(settings):
    settings.CNET_CONTAINER_VOLUMES = []
    assert volume_allowed("alice-cache", owner="alice")
    assert not volume_allowed("alice-cache", owner="bob")
    assert not volume_allowed("alice-cache", owner=None)


@pytest.mark.django_db
def test_a_submitter_may_use_the_named_volumes_with_their_name_and_no_other_user_may(
        user_api, client_for, django_user_model, settings):
    settings.CNET_CONTAINER_VOLUMES = []
    make_node("containers", capabilities={"container": {"available": True}})
    volumes = {"volumes": [{"source": "alice-data", "target": "/data"}]}
    assert submit_container(user_api, volumes).status_code == 201  # alice's own

    bob = client_for(django_user_model.objects.create_user("bob", password="pw"))
    refused = submit_container(bob, volumes)
    assert refused.status_code == 400
    assert "alice-data" in str(refused.json()["config"]["volumes"])
    graph = bob.post("/api/workloads", {"workloads": [
        {"name": "c", "type": "container", "config": {"image": IMAGE, **volumes}}]}, format="json")
    assert graph.status_code == 400 and "alice-data" in str(graph.json())
    assert Workload.objects.filter(owner__username="bob").count() == 0  # nothing written
    assert submit_container(bob, {"volumes": [{"source": "bob-data", "target": "/data"}]}).status_code == 201


@pytest.mark.django_db(transaction=True)
def test_the_engine_is_asked_for_no_capabilities_but_a_short_list_a_pids_limit_and_ports_on_the_node(
        docker_client, tmp_path, settings):  # noqa: F811
    context = AgentContext(node_id=f"ct-{uuid.uuid4().hex[:6]}", work_dir=tmp_path, log_dir=tmp_path / "logs",
                           limiter=CgroupLimiter(group="cnet/unit"), data_dir=tmp_path, address="127.0.0.1")
    workload = Workload(id=uuid.uuid4(), type="container", memory_bytes=0, cpu_millicores=0,
                        config={"image": IMAGE, "command": ["sh"], "args": ["-c", "grep CapEff /proc/self/status"],
                                "ports": {"80/tcp": None}, "pids": 32})
    handle = ContainerExecutor().start(workload, context)
    try:
        host = docker_client.api.inspect_container(handle.container_id)["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert {cap.removeprefix("CAP_") for cap in host["CapAdd"]} == set(settings.CNET_CONTAINER_CAPABILITIES)
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["PidsLimit"] == 32
        assert [binding["HostIp"] for binding in host["PortBindings"]["80/tcp"]] == ["127.0.0.1"]
        exit_ = wait_for(handle.poll, timeout=30, message="the container ended")
        assert exit_.code == 0
        effective = int(dict(handle.read_logs(final=True))["stdout"].split()[1], 16)
        assert effective == sum(1 << CAP_BITS[cap] for cap in settings.CNET_CONTAINER_CAPABILITIES)
    finally:
        handle.kill()
        handle.cleanup()


CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10}


@pytest.fixture
def gpu_node(tmp_path) -> AgentContext:
    (tmp_path / "work").mkdir()
    return AgentContext(node_id="gpu-unit", work_dir=tmp_path / "work", log_dir=tmp_path / "logs",
                        limiter=CgroupLimiter(group="cnet/gpu-unit"), data_dir=tmp_path,
                        capabilities={"gpus": FAKE_GPUS})


def gpu_process(gpus: int) -> Workload:
    return Workload(id=uuid.uuid4(), type="process", gpu_count=gpus, memory_bytes=0, cpu_millicores=0,
                    config={"command": "sh", "args": ["-c", "echo \"[$CUDA_VISIBLE_DEVICES]\"; sleep 30"]})


def visible_devices(handle) -> str:
    return wait_for(lambda: dict(handle.read_logs()).get("stdout"), message="its output").strip()


def test_two_processes_that_each_asked_for_a_gpu_never_share_one(gpu_node):
    executor = ProcessExecutor()
    first, second = executor.start(gpu_process(1), gpu_node), executor.start(gpu_process(1), gpu_node)
    no_gpu = executor.start(gpu_process(0), gpu_node)
    try:
        seen = {visible_devices(first), visible_devices(second)}
        assert seen == {"[0]", "[1]"}
        assert visible_devices(no_gpu) == "[]"  # it asked for none: it sees none
        with pytest.raises(ExecutorError, match="2 of them assigned"):
            executor.start(gpu_process(1), gpu_node)
        first.kill()
        first.cleanup()  # its GPU is free again
        third = executor.start(gpu_process(1), gpu_node)
        assert visible_devices(third) in seen
        third.kill()
        third.cleanup()
    finally:
        for handle in (first, second, no_gpu):
            handle.kill()
            handle.cleanup()


def test_containers_get_gpus_by_device_id_and_never_share_one(gpu_node):
    contexts = [gpu_node.for_workload(str(uuid.uuid4())) for _ in range(3)]
    asked = [Workload(id=context.workload_id, type="container", gpu_count=1, memory_bytes=0, cpu_millicores=0)
             for context in contexts]
    requests = [host_limits(workload, None, context)["device_requests"][0]
                for workload, context in zip(asked[:2], contexts[:2], strict=True)]
    assert sorted(request["DeviceIDs"][0] for request in requests) == ["0", "1"]
    assert all(request["Count"] in (None, 0) for request in requests)  # by id, not "any N"
    with pytest.raises(ExecutorError):
        host_limits(asked[2], None, contexts[2])
    contexts[0].release()
    assert host_limits(asked[2], None, contexts[2])["device_requests"][0]["DeviceIDs"] == requests[0]["DeviceIDs"]
