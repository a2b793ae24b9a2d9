"""Quota arithmetic and reasons (``scheduler.quotas``): effective caps, room, the words, the
priority cap, and the services staff write quotas through."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError

from core.errors import InvalidRequest
from nodes.resources import Resources
from scheduler.models import Quota
from scheduler.quotas import (
    Limit,
    Usage,
    priority_check,
    quota_limits,
    quota_list,
    quota_never_fits,
    quota_save,
)
from tests.helpers import GiB

pytestmark = pytest.mark.django_db

CPU = 1000  # millicores


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice")


def group_of(name, *members, **caps):
    group = Group.objects.create(name=name)
    group.user_set.add(*members)
    if caps:
        Quota.objects.create(group=group, **caps)
    return group


def limit_of(user) -> Limit:
    return quota_limits(owner_ids=[user.pk])[user.pk]


def test_a_user_at_their_cpu_cap_waits_with_the_words_of_the_issue(alice):
    Quota.objects.create(user=alice, cpu_millicores=8 * CPU)
    assert limit_of(alice).room(Usage(cpu=8 * CPU, workloads=8), Resources(cpu=CPU)) == (
        0, "quota: alice uses 8 of 8 CPU")


def test_room_says_what_the_request_needs_beyond_what_is_left(alice):
    Quota.objects.create(user=alice, cpu_millicores=8 * CPU, memory_bytes=4 * GiB)
    limit = limit_of(alice)
    assert limit.room(Usage(cpu=7500), Resources(cpu=CPU)) == (
        0, "quota: alice uses 7.5 of 8 CPU; this needs 1 CPU more")
    assert limit.room(Usage(cpu=CPU, memory=3 * GiB), Resources(cpu=CPU, memory=2 * GiB)) == (
        0, "quota: alice uses 3.0 GiB of 4.0 GiB memory; this needs 2.0 GiB memory more")
    assert limit.room(Usage(cpu=7 * CPU), Resources(cpu=CPU)) == (1, "")


def test_room_counts_instances_and_names_the_cap_that_allows_fewest(alice):
    Quota.objects.create(user=alice, cpu_millicores=8 * CPU, workload_count=5, gpu_count=2)
    limit = limit_of(alice)
    assert limit.room(Usage(cpu=2 * CPU, workloads=2), Resources(cpu=CPU), wanted=10) == (
        3, "quota: alice uses 2 of 5 workloads")
    assert limit.room(Usage(cpu=2 * CPU, workloads=2, gpu=1), Resources(cpu=CPU, gpu=1), wanted=10) == (
        1, "quota: alice uses 1 of 2 GPU; this needs 1 GPU more")
    assert limit.room(Usage(), Resources(cpu=CPU), wanted=4) == (4, "")


def test_a_resource_the_request_does_not_use_never_holds_it_back(alice):
    Quota.objects.create(user=alice, gpu_count=0)
    assert limit_of(alice).room(Usage(cpu=64 * CPU), Resources(cpu=CPU)) == (1, "")
    assert limit_of(alice).room(Usage(), Resources(gpu=1))[0] == 0


def test_a_request_past_the_cap_itself_could_never_run(alice):
    Quota.objects.create(user=alice, cpu_millicores=2 * CPU)
    assert quota_never_fits(owner_id=alice.pk, requirements=Resources(cpu=4 * CPU)) == (
        "quota: alice may use at most 2 CPU; this needs 4 CPU")
    assert quota_never_fits(owner_id=alice.pk, requirements=Resources(cpu=2 * CPU)) == ""


def test_the_effective_cap_is_the_tightest_of_the_users_own_and_each_of_their_groups(alice):
    bob = get_user_model().objects.create_user("bob")
    Quota.objects.create(user=alice, cpu_millicores=8 * CPU, memory_bytes=None)
    group_of("students", alice, bob, cpu_millicores=4 * CPU, workload_count=10)
    group_of("gpu-lab", alice, memory_bytes=16 * GiB, workload_count=20, gpu_count=1)
    group_of("bobs-only", bob, cpu_millicores=CPU)
    group_of("no-quota", alice)

    caps = limit_of(alice).caps
    assert caps == {"cpu": (4 * CPU, "group students"), "workloads": (10, "group students"),
                    "memory": (16 * GiB, "group gpu-lab"), "gpu": (1, "group gpu-lab")}
    assert limit_of(bob).caps == {"cpu": (CPU, "group bobs-only"), "workloads": (10, "group students")}
    assert limit_of(alice).room(Usage(cpu=4 * CPU), Resources(cpu=CPU))[1] == (
        "quota: alice (group students) uses 4 of 4 CPU")


def test_a_user_with_no_quota_or_only_null_limits_has_no_cap(alice):
    carol = get_user_model().objects.create_user("carol")
    Quota.objects.create(user=carol)  # every limit null
    group_of("plain", alice, carol)
    assert quota_limits(owner_ids=[alice.pk, carol.pk]) == {}
    assert quota_never_fits(owner_id=None, requirements=Resources(cpu=CPU)) == ""


def test_limits_of_many_owners_in_one_read(alice, django_assert_num_queries):
    bob = get_user_model().objects.create_user("bob")
    Quota.objects.create(user=alice, cpu_millicores=CPU)
    group_of("team", alice, bob, workload_count=3)
    with django_assert_num_queries(1):
        limits = quota_limits(owner_ids=[alice.pk, bob.pk])
    assert limits[alice.pk].caps == {"cpu": (CPU, ""), "workloads": (3, "group team")}
    assert limits[bob.pk].caps == {"workloads": (3, "group team")}


def test_left_is_never_negative_after_a_cap_was_lowered(alice):
    Quota.objects.create(user=alice, cpu_millicores=2 * CPU, workload_count=1)
    assert limit_of(alice).left(Usage(cpu=6 * CPU, workloads=3)) == {"cpu": 0, "workloads": 0}


def test_priorities_above_the_cap_need_staff(settings, alice):
    settings.CNET_MAX_USER_PRIORITY = 100
    priority_check(user=alice, priority=100)
    with pytest.raises(InvalidRequest) as refused:
        priority_check(user=alice, priority=101)
    assert refused.value.field == "priority" and "100" in str(refused.value)
    with pytest.raises(InvalidRequest):
        priority_check(user=None, priority=101)
    priority_check(user=get_user_model().objects.create_user("staff", is_staff=True), priority=1000)


def test_a_quota_names_one_holder_once(alice):
    students = group_of("students", alice)
    with pytest.raises(InvalidRequest) as both:
        quota_save(quota=Quota(user=alice, group=students, cpu_millicores=CPU))
    assert both.value.field == "user"
    with pytest.raises(InvalidRequest):
        quota_save(quota=Quota(cpu_millicores=CPU))
    quota_save(quota=Quota(user=alice, cpu_millicores=CPU))
    with pytest.raises(InvalidRequest) as again:
        quota_save(quota=Quota(user=alice, workload_count=1))
    assert again.value.field == "user"
    assert Quota.objects.count() == 1


def test_the_database_refuses_a_quota_with_no_holder_whatever_writes_it():
    with pytest.raises(IntegrityError):
        Quota.objects.create(cpu_millicores=CPU)


def test_a_user_sees_their_own_and_their_groups_quotas_staff_see_all(alice):
    bob = get_user_model().objects.create_user("bob")
    mine = Quota.objects.create(user=alice, cpu_millicores=CPU)
    Quota.objects.create(user=bob, cpu_millicores=CPU)
    ours = group_of("team", alice, workload_count=2).quota
    group_of("others", bob, workload_count=2)
    assert set(quota_list(user=alice)) == {mine, ours}
    assert quota_list(user=get_user_model().objects.create_user("root", is_staff=True)).count() == 4
