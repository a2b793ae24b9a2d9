"""``/api/quotas`` (staff write, a user reads their own), the console's quota pages, the priority
cap on every way of submitting, and what a submission and a plan say about quotas."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from scheduler.models import Quota
from tests.helpers import make_node
from workloads.models import Schedule, Workload, WorkloadArray

pytestmark = pytest.mark.django_db


@pytest.fixture
def node(db):
    return make_node("local", cpu=8)


def body(**overrides) -> dict:
    return {"name": "job", "type": "process", "config": {"command": "true"},
            "requirements": {"cpu": 1, "memory": 1024}, **overrides}


def test_staff_set_change_and_remove_a_users_quota(api, user):
    created = api.post("/api/quotas", {"user": "alice", "cpu": 8, "workloads": 4}, format="json")
    assert created.status_code == 201, created.content
    assert {k: created.json()[k] for k in ("user", "group", "cpu", "memory", "gpu", "workloads")} == {
        "user": "alice", "group": None, "cpu": 8.0, "memory": None, "gpu": None, "workloads": 4}
    quota = Quota.objects.get(user=user)
    assert (quota.cpu_millicores, quota.workload_count) == (8000, 4)

    changed = api.patch(f"/api/quotas/{quota.pk}", {"cpu": 0.5, "memory": 2**30}, format="json")
    assert changed.status_code == 200, changed.content
    quota.refresh_from_db()
    assert (quota.cpu_millicores, quota.memory_bytes, quota.workload_count) == (500, 2**30, 4)
    assert api.delete(f"/api/quotas/{quota.pk}").status_code == 204
    assert not Quota.objects.exists()


def test_staff_set_a_groups_quota(api, user):
    Group.objects.create(name="students").user_set.add(user)
    answer = api.post("/api/quotas", {"group": "students", "gpu": 1}, format="json")
    assert answer.status_code == 201, answer.content
    assert Quota.objects.get(group__name="students").gpu_count == 1


@pytest.mark.parametrize(("payload", "field"), [
    ({"user": "alice", "group": "students", "cpu": 1}, "user"),
    ({"cpu": 1}, "user"),
    ({"user": "nobody", "cpu": 1}, "user"),
    ({"user": "alice", "cpu": "8"}, "cpu"),
    ({"user": "alice", "cpu": -1}, "cpu"),
    ({"user": "alice", "memory": 1.5}, "memory"),
    ({"user": "alice", "workloads": -1}, "workloads"),
    ({"user": "alice", "cpus": 1}, "cpus"),
])
def test_a_bad_quota_is_refused_naming_the_field_and_nothing_is_written(api, user, payload, field):
    Group.objects.create(name="students")
    answer = api.post("/api/quotas", payload, format="json")
    assert answer.status_code == 400, answer.content
    assert field in answer.json() and answer.json()["detail"].startswith(field)
    assert not Quota.objects.exists()


def test_a_second_quota_for_one_user_is_refused(api, user):
    Quota.objects.create(user=user, cpu_millicores=1000)
    answer = api.post("/api/quotas", {"user": "alice", "cpu": 2}, format="json")
    assert answer.status_code == 400 and "user" in answer.json()
    assert Quota.objects.get().cpu_millicores == 1000


def test_a_user_without_staff_rights_reads_their_own_quotas_and_writes_none(user_api, user):
    bob = get_user_model().objects.create_user("bob")
    team = Group.objects.create(name="team")
    team.user_set.add(user)
    mine = Quota.objects.create(user=user, cpu_millicores=8000)
    ours = Quota.objects.create(group=team, workload_count=3)
    theirs = Quota.objects.create(user=bob, cpu_millicores=1000)

    listed = user_api.get("/api/quotas")
    assert listed.status_code == 200
    assert {q["id"] for q in listed.json()} == {mine.pk, ours.pk}
    assert user_api.get(f"/api/quotas/{theirs.pk}").status_code == 404
    assert user_api.post("/api/quotas", {"user": "alice", "cpu": 100}, format="json").status_code == 403
    assert user_api.patch(f"/api/quotas/{mine.pk}", {"cpu": 100}, format="json").status_code == 403
    assert user_api.delete(f"/api/quotas/{mine.pk}").status_code == 403
    assert Quota.objects.count() == 3 and Quota.objects.get(pk=mine.pk).cpu_millicores == 8000


def test_quotas_need_a_login(client):
    assert client.get("/api/quotas").status_code in (401, 403)


def test_the_quota_endpoints_are_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert {"get", "post"} <= set(schema["paths"]["/api/quotas/"])
    assert {"get", "patch", "put", "delete"} <= set(schema["paths"]["/api/quotas/{id}/"])
    assert {"user", "group", "cpu", "memory", "gpu", "workloads"} <= set(
        schema["components"]["schemas"]["Quota"]["properties"])


def test_staff_add_a_quota_in_the_console(staff_client, user):
    answer = staff_client.post("/admin/scheduler/quota/add/", {"user": user.pk, "cpu_millicores": 2000,
                                                               "workload_count": 2})
    assert answer.status_code == 302, answer.content.decode()[:2000]
    assert Quota.objects.get(user=user).cpu_millicores == 2000
    listed = staff_client.get("/admin/scheduler/quota/")
    assert listed.status_code == 200 and "user alice" in listed.content.decode()
    holderless = staff_client.post("/admin/scheduler/quota/add/", {"cpu_millicores": 1000})
    assert holderless.status_code == 200  # the form again, with the constraint's error
    assert Quota.objects.count() == 1


def test_a_console_user_without_staff_rights_cannot_reach_quotas(client, user):
    client.force_login(user)
    assert client.get("/admin/scheduler/quota/").status_code in (302, 403)
    assert client.post("/admin/scheduler/quota/add/", {"user": user.pk, "cpu_millicores": 99_000}).status_code in (
        302, 403)
    assert not Quota.objects.exists()


# --- the priority cap ---------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [
    body(priority=101),
    body(priority=101, count=3),
    {"workloads": [body(key="a"), body(key="b", priority=500, depends_on=[{"workload": "a"}])]},
    body(priority=101, schedule="*/5 * * * *"),
])
def test_a_priority_above_the_cap_without_staff_rights_is_refused_and_nothing_is_written(
        user_api, node, settings, payload):
    settings.CNET_MAX_USER_PRIORITY = 100
    answer = user_api.post("/api/workloads", payload, format="json")
    assert answer.status_code == 400, answer.content
    assert "priority" in answer.json()["detail"] and "staff" in answer.json()["detail"]
    assert not Workload.objects.exists() and not WorkloadArray.objects.exists() and not Schedule.objects.exists()


def test_a_plan_with_a_priority_above_the_cap_is_refused_too(user_api, node):
    answer = user_api.post("/api/workloads/plan", body(priority=101), format="json")
    assert answer.status_code == 400 and "priority" in answer.json()


def test_priorities_up_to_the_cap_and_staffs_above_it_are_kept(user_api, api, node, settings):
    settings.CNET_MAX_USER_PRIORITY = 100
    assert user_api.post("/api/workloads", body(priority=100), format="json").status_code == 201
    assert api.post("/api/workloads", body(priority=1000), format="json").status_code == 201
    assert sorted(Workload.objects.values_list("priority", flat=True)) == [100, 1000]


# --- what a submission and a plan say --------------------------------------------------------------
def test_a_request_past_the_users_cap_itself_is_refused_naming_requirements(user_api, user, node):
    Quota.objects.create(user=user, cpu_millicores=2000)
    answer = user_api.post("/api/workloads", body(requirements={"cpu": 4}), format="json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["detail"] == ("requirements: quota: alice may use at most 2 CPU; this needs 4 CPU, "
                                       "so it could never run")
    assert not Workload.objects.exists()


def test_a_plan_says_a_request_would_wait_for_its_owners_quota(user_api, user, node):
    Quota.objects.create(user=user, cpu_millicores=2000)
    assert user_api.post("/api/workloads", body(requirements={"cpu": 2}), format="json").status_code == 201
    plan = user_api.post("/api/workloads/plan", body(), format="json").json()
    assert plan["outcome"] == "waits" and plan["node"] is None
    assert plan["summary"] == "quota: alice uses 2 of 2 CPU"
    assert plan["queue"]["position"] == 1 and plan["estimated_start"] == "unknown"
    never = user_api.post("/api/workloads/plan", body(requirements={"cpu": 3}), format="json").json()
    assert never["outcome"] == "never" and never["never_fits"]["short"] == [
        "quota: alice may use at most 2 CPU; this needs 3 CPU"]
    assert Workload.objects.count() == 1


def test_a_submission_over_quota_answers_pending_with_the_reason(user_api, user, node):
    Quota.objects.create(user=user, workload_count=1)
    assert user_api.post("/api/workloads", body(), format="json").json()["status"] == "scheduled"
    second = user_api.post("/api/workloads", body(), format="json")
    assert second.status_code == 201
    assert (second.json()["status"], second.json()["reason"]) == ("pending", "quota: alice uses 1 of 1 workloads")
