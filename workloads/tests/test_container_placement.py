"""Container workloads through the API: placed only where an engine is, unsafe requests refused.

No engine needed: capabilities are what agents report at registration.
"""

import pytest
from django.test import override_settings

from tests.helpers import PROCESS_NODE_CAPABILITIES, GiB, make_node
from workloads.models import Workload, WorkloadEvent

from .api.seeds import SEED_CONTAINER

pytestmark = pytest.mark.django_db

NO_ENGINE = {**PROCESS_NODE_CAPABILITIES,
             "container": {"available": False, "reason": "no container engine reachable: no socket"}}
ENGINE = {**PROCESS_NODE_CAPABILITIES, "container": {"available": True, "version": "20.10.24"}}


def test_container_goes_to_a_capable_child_and_the_local_node_says_why_not(api):
    make_node("local", cpu=4, memory=8 * GiB, capabilities=NO_ENGINE)
    make_node("docker-child", parent="local", cpu=4, memory=8 * GiB, capabilities=ENGINE)
    response = api.post("/api/workloads", {**SEED_CONTAINER, "node": "local"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["node"] == "docker-child"
    placement = WorkloadEvent.objects.filter(workload_id=response.json()["id"], kind="placement").get()
    assert {"node": "local", "fits": False, "reason": "cannot run container workloads"} in placement.details


def test_container_stays_pending_where_no_node_has_an_engine_and_says_so(api):
    make_node("local", cpu=4, memory=8 * GiB, capabilities=NO_ENGINE)
    make_node("child", parent="local", cpu=4, memory=8 * GiB, capabilities=NO_ENGINE)
    response = api.post("/api/workloads", {**SEED_CONTAINER, "node": "local"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert "local: cannot run container workloads" in body["reason"]
    assert "child: cannot run container workloads" in body["reason"]


def test_a_process_still_runs_on_a_node_without_an_engine(api):
    make_node("local", cpu=4, memory=8 * GiB, capabilities=NO_ENGINE)
    body = {"name": "p", "type": "process", "config": {"command": "sleep", "args": ["1"]}, "node": "local"}
    assert api.post("/api/workloads", body, format="json").json()["node"] == "local"


@pytest.mark.parametrize(("change", "field"), [
    ({"privileged": True}, "privileged"),
    ({"network_mode": "host"}, "network_mode"),
    ({"network_mode": "container:victim"}, "network_mode"),
    ({"volumes": [{"source": "/etc", "target": "/host-etc"}]}, "volumes"),
    ({"volumes": [{"source": "~/secrets", "target": "/s"}]}, "volumes"),
])
def test_unsafe_container_requests_are_refused_with_400_and_nothing_written(api, change, field):
    make_node("local", cpu=4, memory=8 * GiB, capabilities=ENGINE)
    body = {**SEED_CONTAINER, "config": {**SEED_CONTAINER["config"], **change}}
    response = api.post("/api/workloads", body, format="json")
    assert response.status_code == 400
    assert field in response.content.decode()
    assert not Workload.objects.exists()


@override_settings(CNET_CONTAINERS_ALLOW_PRIVILEGED=True, CNET_CONTAINERS_ALLOW_HOST_MOUNTS=True)
def test_the_operator_can_allow_what_is_refused_by_default(api):
    make_node("local", cpu=4, memory=8 * GiB, capabilities=ENGINE)
    config = {**SEED_CONTAINER["config"], "privileged": True, "volumes": [{"source": "/srv", "target": "/srv"}]}
    response = api.post("/api/workloads", {**SEED_CONTAINER, "config": config}, format="json")
    assert response.status_code == 201, response.content


@override_settings(CNET_CONTAINER_VOLUMES=["cache"])  # named volumes come from the operator's allowlist
def test_named_volumes_ports_and_pull_policy_are_accepted(api):
    make_node("local", cpu=4, memory=8 * GiB, capabilities=ENGINE)
    config = {**SEED_CONTAINER["config"], "volumes": [{"source": "cache", "target": "/cache"}],
              "ports": ["18580:80"], "pull_policy": "never", "working_dir": "/srv", "env": {"A": "1"}}
    response = api.post("/api/workloads", {**SEED_CONTAINER, "config": config}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["config"]["ports"] == {"80/tcp": 18580}


def test_a_capable_node_behind_many_without_an_engine_is_still_found(api):
    """Capability is a filter on the candidates, not a post-filter of the first few fetched."""
    make_node("local", cpu=4, memory=8 * GiB, capabilities=NO_ENGINE)
    for index in range(40):
        make_node(f"plain-{index:02}", parent="local", cpu=4, memory=8 * GiB, capabilities=NO_ENGINE)
    make_node("plain-99", parent="plain-00", cpu=4, memory=8 * GiB, capabilities=NO_ENGINE)
    make_node("docker-deep", parent="plain-99", cpu=4, memory=8 * GiB, capabilities=ENGINE)
    response = api.post("/api/workloads", {**SEED_CONTAINER, "node": "local"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["node"] == "docker-deep", response.json()["reason"]
