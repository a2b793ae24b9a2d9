"""Quotas as placement meets them, on the real database: over-quota work waits pending with its
reason, is placed when its owner's own work ends, never holds up others' work, and an array
places only what its owner's quota allows."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from nodes.models import Node
from nodes.resources import Resources
from nodes.services import node_set_schedulable
from scheduler.models import Quota
from tests.helpers import at_once, make_node, submit_process
from workloads.models import EventKind, Workload, WorkloadEvent, WorkloadStatus
from workloads.services import (
    workload_array_submit,
    workload_stop,
    workload_transition,
    workloads_place_pending,
)
from workloads.services.lifecycle import workload_place

S = WorkloadStatus
CPU = 1000


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice")


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user("bob")


def status(workload) -> str:
    return Workload.objects.values_list("status", flat=True).get(pk=workload.pk)


def reason(workload) -> str:
    return Workload.objects.values_list("reason", flat=True).get(pk=workload.pk)


@pytest.mark.django_db
def test_over_quota_work_waits_with_its_reason_and_is_placed_when_the_owners_work_ends(alice):
    make_node("local", cpu=16)
    Quota.objects.create(user=alice, cpu_millicores=8 * CPU)
    first = [submit_process(owner=alice, cpu=4, name=f"w{i}") for i in range(2)]
    waiting = submit_process(owner=alice, cpu=1, name="third")

    assert [status(w) for w in first] == [S.SCHEDULED, S.SCHEDULED]
    assert status(waiting) == S.PENDING
    assert reason(waiting) == "quota: alice uses 8 of 8 CPU"
    event = WorkloadEvent.objects.filter(workload=waiting, kind=EventKind.PLACEMENT).get()
    assert event.reason == "quota: alice uses 8 of 8 CPU"
    assert workloads_place_pending() == 0  # the node has room; the quota has none
    assert status(waiting) == S.PENDING

    workload_transition(workload_id=first[0].pk, to=S.RUNNING)
    workload_transition(workload_id=first[0].pk, to=S.SUCCEEDED)
    assert workloads_place_pending() == 1
    assert status(waiting) == S.SCHEDULED
    assert Node.objects.get(node_id="local").cpu_allocated_millicores == 5 * CPU


@pytest.mark.django_db
def test_a_group_quota_caps_each_member_on_their_own(alice, bob):
    make_node("local", cpu=16)
    team = Group.objects.create(name="team")
    team.user_set.add(alice, bob)
    Quota.objects.create(group=team, workload_count=1)
    assert status(submit_process(owner=alice, cpu=1)) == S.SCHEDULED
    assert status(submit_process(owner=bob, cpu=1)) == S.SCHEDULED
    held = submit_process(owner=alice, cpu=1)
    assert status(held) == S.PENDING
    assert reason(held) == "quota: alice (group team) uses 1 of 1 workloads"


@pytest.mark.django_db
def test_one_users_backlog_over_quota_never_holds_up_anothers_pending_work(alice, bob):
    make_node("local", cpu=4)
    Quota.objects.create(user=alice, workload_count=1)
    submit_process(owner=alice, cpu=1, name="running")
    backlog = [submit_process(owner=alice, cpu=1, priority=50, name=f"b{i}") for i in range(5)]
    filler = submit_process(owner=bob, cpu=3, name="filler")
    bobs = submit_process(owner=bob, cpu=1, name="bobs")
    assert status(bobs) == S.PENDING  # the node is full: it waits for room, not for a quota

    workload_stop(workload=filler)
    # Alice's five come first by priority and would fill a pass of 3; they are left out of it.
    assert workloads_place_pending(limit=3) == 1
    assert status(bobs) == S.SCHEDULED
    assert {status(w) for w in backlog} == {S.PENDING}
    assert {reason(w) for w in backlog} == {"quota: alice uses 1 of 1 workloads"}


@pytest.mark.django_db
def test_the_pass_leaves_out_only_what_exceeds_what_is_left_of_the_quota(alice, bob):
    make_node("local", cpu=5)
    Quota.objects.create(user=alice, cpu_millicores=4 * CPU)
    filler = submit_process(owner=bob, cpu=2, name="filler")
    submit_process(owner=alice, cpu=3, name="running")
    big = submit_process(owner=alice, cpu=2, priority=9, name="big")
    small = submit_process(owner=alice, cpu=1, name="small")
    assert reason(big) == "quota: alice uses 3 of 4 CPU; this needs 2 CPU more"
    assert reason(small).startswith("no node fits now")

    workload_stop(workload=filler)
    assert workloads_place_pending(limit=1) == 1  # the one try goes to "small", which fits the 1 CPU left
    assert (status(big), status(small)) == (S.PENDING, S.SCHEDULED)


@pytest.mark.django_db
def test_an_array_places_only_what_its_owners_quota_allows_and_the_rest_later(alice):
    make_node("local", cpu=16)
    Quota.objects.create(user=alice, workload_count=3)
    submit_process(owner=alice, cpu=1, name="before")
    array = workload_array_submit(owner=alice, count=5, name="arr", type="process",
                                  config={"command": "true"}, requirements=Resources(cpu=CPU))
    instances = list(Workload.objects.filter(array=array).order_by("array_index"))
    assert [w.status for w in instances] == [S.SCHEDULED] * 2 + [S.PENDING] * 3
    assert {w.reason for w in instances[2:]} == {
        "placed 2 of 5 instances (2 on local); 3 wait, quota: alice uses 1 of 3 workloads"}
    assert array.events.last().placed == 2

    workload_stop(workload=Workload.objects.get(name="before"))
    assert workloads_place_pending() == 1
    assert [status(w) for w in instances] == [S.SCHEDULED] * 3 + [S.PENDING] * 2
    assert reason(instances[4]) == "placed 1 of 3 instances (1 on local); 2 wait, quota: alice uses 2 of 3 workloads"


@pytest.mark.django_db
def test_an_array_whose_owner_is_at_quota_places_nothing_and_says_why(alice):
    make_node("local", cpu=16)
    Quota.objects.create(user=alice, cpu_millicores=CPU)
    submit_process(owner=alice, cpu=1)
    array = workload_array_submit(owner=alice, count=3, name="arr", type="process", config={"command": "true"},
                                  requirements=Resources(cpu=CPU))
    assert set(Workload.objects.filter(array=array).values_list("status", "reason")) == {
        (S.PENDING, "3 wait, quota: alice uses 1 of 1 CPU")}


@pytest.mark.django_db(transaction=True)
def test_racing_placements_of_one_user_never_pass_the_cap(alice):
    """Eight pending workloads of one user placed at once from eight threads: the quota rows'
    lock (Postgres) or SQLite's one writer lets exactly the cap through."""
    make_node("local", cpu=32)
    node_set_schedulable(node_id="local", schedulable=False)  # so that they wait to be placed together
    pending = [submit_process(owner=alice, cpu=1, name=f"r{i}") for i in range(8)]
    node_set_schedulable(node_id="local", schedulable=True)
    Quota.objects.create(user=alice, workload_count=3)

    each = iter(pending)  # one workload per thread, so that every placement races the others
    at_once(8, lambda: workload_place(workload_id=next(each).pk))
    assert Workload.objects.filter(owner=alice, status=S.SCHEDULED).count() == 3
    assert Node.objects.get(node_id="local").cpu_allocated_millicores == 3 * CPU
