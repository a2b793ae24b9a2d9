"""Each curl body in seed 000 is a test."""

import pytest

from tests.helpers import GiB, make_node

pytestmark = pytest.mark.django_db

SEED_PROCESS = {
    "name": "test-process",
    "type": "process",
    "requirements": {"cpu": 1.0, "memory": 536870912},
    "config": {"command": "sleep", "args": ["60"], "env": {"TEST": "value"}},
}


def test_seed_process_body_is_accepted_and_placed_on_the_local_node(api):
    make_node("local", cpu=4, memory=8 * GiB)
    response = api.post("/api/workloads", SEED_PROCESS, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "scheduled"
    assert body["node"] == "local"
    assert body["requirements"]["cpu"] == 1.0  # the seed's cpu is cores
    assert body["requirements"]["memory"] == 536870912
    listed = api.get("/api/workloads").json()
    assert [w["id"] for w in listed] == [body["id"]]
