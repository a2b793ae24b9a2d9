"""Bad input is refused whole: 400 naming the field (413 for size), and nothing written."""

import copy
import json

import pytest

from tests.helpers import GiB, make_node
from workloads.models import Workload, WorkloadEvent

from .seeds import EVERY_KIND, SEED_CONTAINER, SEED_MLMODEL, SEED_PROCESS

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def nodes():
    make_node("local", cpu=4, memory=8 * GiB,
              capabilities=EVERY_KIND)
    make_node("big", cpu=8, memory=32 * GiB)


def changed(base, path, value):
    """A copy of ``base`` with the dotted ``path`` set to ``value`` (or removed for ``...``)."""
    body = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return body


CASES = [
    ("requirements.cpu", SEED_PROCESS, 0),
    ("requirements.cpu", SEED_PROCESS, -1),
    ("requirements.cpu", SEED_PROCESS, 1e9),
    ("requirements.cpu", SEED_PROCESS, True),
    ("requirements.cpu", SEED_PROCESS, "1"),
    ("requirements.cpu", SEED_PROCESS, 0.0001),
    ("requirements.memory", SEED_PROCESS, 0),
    ("requirements.memory", SEED_PROCESS, -536870912),
    ("requirements.memory", SEED_PROCESS, 2**70),
    ("requirements.memory", SEED_PROCESS, 1.5),
    ("requirements.memory", SEED_PROCESS, "512Mi"),
    ("requirements.gpu", SEED_PROCESS, -1),
    ("requirements.disk", SEED_PROCESS, 1),
    ("type", SEED_PROCESS, "vm"),
    ("config", SEED_PROCESS, "sleep 60"),
    ("config", SEED_PROCESS, ...),
    ("config.command", SEED_PROCESS, ...),
    ("config.command", SEED_PROCESS, ["sleep", "60"]),
    ("config.image", SEED_CONTAINER, ...),
    ("config.model_path", SEED_MLMODEL, ...),
    ("config.args", SEED_PROCESS, [1, 2]),
    ("config.args", SEED_PROCESS, "60"),
    ("config.env", SEED_PROCESS, {"TEST": 1}),
    ("config.env", SEED_PROCESS, {"TEST": None}),
    ("config.env", SEED_PROCESS, ["TEST=value"]),
    ("config.env", SEED_PROCESS, {"my-var": "x"}),  # no shell passes it on
    ("config.env", SEED_PROCESS, {"9LIVES": "x"}),
    ("config.env", SEED_MLMODEL, {"A B": "x"}),
    ("config.env", SEED_PROCESS, {"UID": "0"}),  # a shell's own
    ("config.working_dir", SEED_PROCESS, "../escape"),
    ("config.working_dir", SEED_PROCESS, "/etc"),
    ("config.model_path", SEED_MLMODEL, "/etc/passwd"),
    ("config.model_path", SEED_MLMODEL, "models/../../x"),
    ("config.shell", SEED_PROCESS, True),
    ("config.imagee", SEED_CONTAINER, "typo"),
    ("strategy", SEED_PROCESS, "round_robin"),
    ("node", SEED_PROCESS, "ghost-node"),
    ("colour", SEED_PROCESS, "blue"),
    ("name", SEED_PROCESS, ...),
    ("name", SEED_PROCESS, 5),
    ("priority", SEED_PROCESS, "high"),
]


@pytest.mark.parametrize("path, base, value", CASES, ids=[f"{p}={v!r}" for p, _b, v in CASES])
def test_bad_field_is_400_naming_it_and_writes_nothing(api, path, base, value):
    before = (Workload.objects.count(), WorkloadEvent.objects.count())
    response = api.post("/api/workloads", changed(base, path, value), format="json")
    assert response.status_code == 400, response.content
    detail = response.json()["detail"]
    # The message names the field (its last part at least, e.g. "config.args.0: ...").
    assert path.split(".")[-1] in detail or path in detail, detail
    assert (Workload.objects.count(), WorkloadEvent.objects.count()) == before


def test_malformed_json_is_400_and_writes_nothing(api):
    response = api.post("/api/workloads", data='{"name": "x", "type": ', content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]
    assert Workload.objects.count() == 0 and WorkloadEvent.objects.count() == 0


def test_a_body_that_is_not_an_object_is_400(api):
    response = api.post("/api/workloads", data="[1, 2]", content_type="application/json")
    assert response.status_code == 400
    assert Workload.objects.count() == 0


def test_a_body_over_one_mebibyte_is_413_and_writes_nothing(api):
    body = changed(SEED_PROCESS, "config.env", {"BIG": "x" * (1024 * 1024)})
    response = api.post("/api/workloads", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 413
    assert "body" in response.json()["detail"]
    assert Workload.objects.count() == 0 and WorkloadEvent.objects.count() == 0


def test_a_request_larger_than_every_node_even_empty_is_400_naming_the_largest(api):
    body = changed(SEED_PROCESS, "requirements.memory", 64 * GiB)
    response = api.post("/api/workloads", body, format="json")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("requirements:")
    assert "big" in detail and "32.0 GiB" in detail
    assert Workload.objects.count() == 0 and WorkloadEvent.objects.count() == 0


def test_more_cpu_than_any_node_is_refused_too(api):
    response = api.post("/api/workloads", changed(SEED_PROCESS, "requirements.cpu", 64.0), format="json")
    assert response.status_code == 400
    assert "big" in response.json()["detail"]
    assert Workload.objects.count() == 0
