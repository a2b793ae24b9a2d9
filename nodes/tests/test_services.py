"""Allocation, release and membership on the real database."""

import threading

import pytest
from django.db import IntegrityError, connection, transaction

from core.errors import NotFound, StateConflict
from nodes.models import Node, NodeStatus
from nodes.resources import Resources
from nodes.services import node_allocate, node_delete, node_register, node_release, node_set_schedulable
from tests.helpers import GiB, make_node


@pytest.mark.django_db
def test_allocate_takes_resources_only_while_they_fit():
    node = make_node("n1", cpu=2, memory=4 * GiB)
    one = Resources(cpu=1000, memory=2 * GiB)
    assert node_allocate(node_pk=node.pk, requirements=one)
    assert node_allocate(node_pk=node.pk, requirements=one)
    assert not node_allocate(node_pk=node.pk, requirements=Resources(cpu=1))
    node.refresh_from_db()
    assert (node.cpu_allocated_millicores, node.memory_allocated_bytes) == (2000, 4 * GiB)


@pytest.mark.django_db
def test_allocate_refuses_a_node_that_is_not_ready():
    node = make_node("n1")
    node_set_schedulable(node_id="n1", schedulable=False)
    assert not node_allocate(node_pk=node.pk, requirements=Resources(cpu=100))
    node.refresh_from_db()
    assert node.status == NodeStatus.DRAINING and node.cpu_allocated_millicores == 0


@pytest.mark.django_db
def test_release_gives_back_what_was_taken_and_never_goes_negative():
    node = make_node("n1")
    taken = Resources(cpu=1500, memory=GiB)
    node_allocate(node_pk=node.pk, requirements=taken)
    node_release(node_pk=node.pk, requirements=taken)
    node.refresh_from_db()
    assert node.allocated() == {"cpu": 0, "gpu": 0, "memory": 0, "storage": 0}
    node_release(node_pk=node.pk, requirements=taken)  # a second release finds nothing to give back
    node.refresh_from_db()
    assert node.allocated() == {"cpu": 0, "gpu": 0, "memory": 0, "storage": 0}


@pytest.mark.django_db
def test_the_database_refuses_allocated_above_capacity_whatever_code_writes_it():
    node = make_node("n1", cpu=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Node.objects.filter(pk=node.pk).update(cpu_allocated_millicores=1001)


@pytest.mark.django_db
def test_register_links_parent_and_symmetrical_peers_and_keeps_paths():
    make_node("root")
    make_node("mid", parent="root")
    leaf = make_node("leaf", parent="mid")
    peer = make_node("peer", peers=("root",))
    assert leaf.depth == 2
    assert leaf.path.startswith(Node.objects.get(node_id="mid").path)
    assert list(Node.objects.get(node_id="root").peers.values_list("node_id", flat=True)) == ["peer"]
    assert list(peer.peers.values_list("node_id", flat=True)) == ["root"]


@pytest.mark.django_db
def test_register_resolves_a_parent_by_its_advertised_address():
    node_register(node_id="parent", address="10.0.0.1", port=8080, capacity=Resources(cpu=1000, memory=GiB))
    child = node_register(node_id="child", capacity=Resources(cpu=1000, memory=GiB), parent="10.0.0.1:8080")
    assert child.parent.node_id == "parent"


@pytest.mark.django_db
def test_reregistering_never_shrinks_capacity_below_what_is_allocated():
    node = make_node("n1", cpu=4)
    node_allocate(node_pk=node.pk, requirements=Resources(cpu=3000))
    node = make_node("n1", cpu=2)
    assert node.cpu_millicores == 3000


@pytest.mark.django_db(transaction=True)
def test_racing_allocations_never_oversubscribe_a_node():
    node = make_node("n1", cpu=2, memory=8 * GiB)
    wins = []
    barrier = threading.Barrier(8)

    def claim():
        try:
            barrier.wait()
            for _ in range(5):
                wins.append(node_allocate(node_pk=node.pk, requirements=Resources(cpu=250)))
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    node.refresh_from_db()
    assert wins.count(True) == 8
    assert node.cpu_allocated_millicores == 2000


@pytest.mark.django_db
def test_delete_refuses_a_node_that_holds_work_and_changes_nothing():
    node = make_node("busy", gpu=1)
    node_allocate(node_pk=node.pk, requirements=Resources(cpu=500, gpu=1))
    with pytest.raises(StateConflict) as refused:
        node_delete(node_id="busy")
    assert "cpu_allocated_millicores 500" in str(refused.value) and "gpu_allocated 1" in str(refused.value)
    node.refresh_from_db()
    assert node.status == NodeStatus.READY and node.cpu_allocated_millicores == 500


@pytest.mark.django_db
def test_delete_removes_an_idle_node_and_its_children_become_roots():
    make_node("root")
    node = make_node("mid", parent="root")
    make_node("leaf", parent="mid")
    taken = Resources(cpu=100)
    node_allocate(node_pk=node.pk, requirements=taken)
    node_release(node_pk=node.pk, requirements=taken)  # its work ended: it holds nothing now
    node_delete(node_id="mid")
    assert not Node.objects.filter(node_id="mid").exists()
    leaf = Node.objects.get(node_id="leaf")
    assert leaf.parent is None and leaf.path == f"/{leaf.pk}/" and leaf.depth == 0


@pytest.mark.django_db
def test_delete_of_an_unknown_node_is_not_found():
    with pytest.raises(NotFound):
        node_delete(node_id="nobody")
