"""Issue 15, point 2: a workload's process count limit is a requirement (``requirements.pids``,
kept as ``config.pids``, its alias), capped by CNET_WORKLOAD_PIDS_MAX; what the executors get."""

import pytest

from tests.helpers import make_node
from workloads.executors.limits import Limits
from workloads.models import Workload


def submit(api, *, requirements: dict, config: dict | None = None, type: str = "process"):
    base = {"command": "true"} if type == "process" else {"image": "busybox:latest"}
    return api.post("/api/workloads", {"name": "p", "type": type, "config": {**base, **(config or {})},
                                       "requirements": {"cpu": 0.1, **requirements}}, format="json")


@pytest.mark.django_db
@pytest.mark.parametrize("type", ["process", "container"])
def test_a_pids_requirement_is_the_limit_its_executor_applies(user_api, type):
    make_node("pids-node", capabilities={"container": {"available": True}})
    answer = submit(user_api, requirements={"pids": 16}, type=type)
    assert answer.status_code == 201, answer.content
    workload = Workload.objects.get(pk=answer.json()["id"])
    assert workload.config["pids"] == 16
    assert Limits.of(workload).pids == 16
    assert answer.json()["requirements"] == {"cpu": 0.1, "memory": 64 * 1024 * 1024, "gpu": 0, "storage": 0}


@pytest.mark.django_db
def test_without_one_the_default_applies(user_api, settings):
    make_node("pids-node")
    settings.CNET_WORKLOAD_PIDS_LIMIT = 512
    answer = submit(user_api, requirements={})
    assert answer.status_code == 201, answer.content
    assert Limits.of(Workload.objects.get(pk=answer.json()["id"])).pids == 512


@pytest.mark.django_db
@pytest.mark.parametrize(("requirements", "config", "where"), [
    ({"pids": 0}, {}, ("requirements", "pids")),
    ({"pids": "16"}, {}, ("requirements", "pids")),
    ({"pids": 101}, {}, ("requirements", "pids")),  # over the cap
    ({}, {"pids": 101}, ("config", "pids")),  # the alias has the same cap
    ({"pids": 16}, {"pids": 32}, ("requirements", "pids")),  # two limits that disagree
])
def test_a_bad_pids_requirement_is_refused_naming_it_and_nothing_is_written(
        user_api, settings, requirements, config, where):
    make_node("pids-node")
    settings.CNET_WORKLOAD_PIDS_MAX = 100
    answer = submit(user_api, requirements=requirements, config=config)
    assert answer.status_code == 400, answer.content
    outer, inner = where
    assert inner in answer.json()[outer], answer.json()
    assert not Workload.objects.exists()


@pytest.mark.django_db
def test_the_same_limit_twice_is_one_limit(user_api):
    make_node("pids-node")
    answer = submit(user_api, requirements={"pids": 16}, config={"pids": 16})
    assert answer.status_code == 201, answer.content
    assert Workload.objects.get(pk=answer.json()["id"]).config["pids"] == 16
