"""``on_disconnect`` in a submission: "stop" or "keep", else what the restart policy implies."""

import pytest

from tests.helpers import make_node
from workloads.models import Workload


def submit(api, **extra):
    return api.post("/api/workloads", {"name": "w", "type": "process", "config": {"command": "true"},
                                       "requirements": {"cpu": 0.1}, **extra}, format="json")


@pytest.mark.django_db
@pytest.mark.parametrize(("extra", "shown", "stored"), [
    ({}, "keep", None),
    ({"restart_policy": "on-failure"}, "stop", None),
    ({"restart_policy": "always"}, "stop", None),
    ({"restart_policy": "never", "on_disconnect": "stop"}, "stop", "stop"),
    ({"restart_policy": "on-failure", "on_disconnect": "keep"}, "keep", "keep"),
])
def test_on_disconnect_is_chosen_or_implied_by_the_restart_policy(user_api, extra, shown, stored):
    make_node("n")
    answer = submit(user_api, **extra)
    assert answer.status_code == 201, answer.content
    assert answer.json()["on_disconnect"] == shown
    assert Workload.objects.get(pk=answer.json()["id"]).on_disconnect == stored
    assert user_api.get(f"/api/workloads/{answer.json()['id']}").json()["on_disconnect"] == shown


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["pause", "", None, 1, ["keep"]])
def test_a_bad_on_disconnect_is_refused_naming_it_and_nothing_is_written(user_api, value):
    make_node("n")
    answer = submit(user_api, on_disconnect=value)
    assert answer.status_code == 400
    assert "on_disconnect" in answer.json()
    assert not Workload.objects.exists()


@pytest.mark.django_db
def test_an_array_and_a_schedule_carry_it(user_api):
    make_node("n")
    array = submit(user_api, count=2, restart_policy="on-failure", on_disconnect="keep")
    assert array.status_code == 201, array.content
    assert set(Workload.objects.values_list("on_disconnect", flat=True)) == {"keep"}
    schedule = submit(user_api, schedule="@daily", on_disconnect="stop")
    assert schedule.status_code == 201, schedule.content
    assert schedule.json()["workload"]["on_disconnect"] == "stop"
