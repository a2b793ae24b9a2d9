"""``max_runtime_seconds`` (issue 16, point 4's data): taken at submit (one, an array, a graph
item), kept on the row and answered on read; zero, negative or not an integer is 400 naming it,
and nothing is written. The agent's enforcement is tested with the agent."""

import pytest
from django.db import IntegrityError, transaction

from tests.helpers import GiB, make_node
from workloads.models import Workload, WorkloadArray, WorkloadEvent

from .seeds import SEED_PROCESS

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def local_node():
    make_node("local", cpu=4, memory=8 * GiB)


def test_a_time_limit_is_kept_and_answered(api):
    created = api.post("/api/workloads", SEED_PROCESS | {"max_runtime_seconds": 90}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["max_runtime_seconds"] == 90
    read = api.get(f"/api/workloads/{created.json()['id']}").json()
    assert read["max_runtime_seconds"] == 90
    assert Workload.objects.get().max_runtime_seconds == 90


def test_no_time_limit_reads_as_null(api):
    created = api.post("/api/workloads", SEED_PROCESS | {"max_runtime_seconds": None}, format="json")
    assert created.status_code == 201
    assert api.get(f"/api/workloads/{created.json()['id']}").json()["max_runtime_seconds"] is None
    plain = api.post("/api/workloads", SEED_PROCESS, format="json").json()
    assert plain["max_runtime_seconds"] is None


def test_every_instance_of_an_array_and_every_graph_item_carries_its_limit(api):
    array = api.post("/api/workloads", SEED_PROCESS | {"count": 3, "max_runtime_seconds": 5}, format="json")
    assert array.status_code == 201, array.content
    assert set(Workload.objects.filter(array_id=array.json()["id"]).values_list("max_runtime_seconds",
                                                                                 flat=True)) == {5}
    graph = api.post("/api/workloads", {"workloads": [
        SEED_PROCESS | {"key": "a", "name": "a", "max_runtime_seconds": 7},
        SEED_PROCESS | {"name": "b", "depends_on": [{"workload": "a"}]},
    ]}, format="json")
    assert graph.status_code == 201, graph.content
    first, second = graph.json()["workloads"]
    assert (first["max_runtime_seconds"], second["max_runtime_seconds"]) == (7, None)


@pytest.mark.parametrize("value", [0, -1, "60", 1.5, True, 2**31])
def test_a_bad_time_limit_is_400_naming_it_and_writes_nothing(api, value):
    for body in (SEED_PROCESS | {"max_runtime_seconds": value},
                 SEED_PROCESS | {"count": 2, "max_runtime_seconds": value},
                 {"workloads": [SEED_PROCESS | {"max_runtime_seconds": value}]}):
        response = api.post("/api/workloads", body, format="json")
        assert response.status_code == 400, response.content
        assert "max_runtime_seconds" in response.json()["detail"]
    assert (Workload.objects.count(), WorkloadArray.objects.count(), WorkloadEvent.objects.count()) == (0, 0, 0)


def test_the_database_refuses_a_limit_of_zero_whatever_wrote_it():
    with pytest.raises(IntegrityError), transaction.atomic():
        Workload.objects.create(name="x", type="process", max_runtime_seconds=0)


def test_the_console_form_submits_a_time_limit(staff_client):
    response = staff_client.post("/admin/workloads/workload/add/", {
        "name": "limited", "type": "process", "command_line": "sleep 60", "max_runtime_seconds": "30",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Workload.objects.get(name="limited").max_runtime_seconds == 30


def test_the_console_form_puts_a_bad_limit_on_its_field(staff_client):
    response = staff_client.post("/admin/workloads/workload/add/", {
        "name": "limited", "type": "process", "command_line": "sleep 60", "max_runtime_seconds": "-3",
    })
    assert response.status_code == 200
    assert "max_runtime_seconds" in response.context["form"].errors
    assert not Workload.objects.exists()
