"""A parent or peer named before it registered is linked the moment it registers (no heartbeat)."""

import threading

import pytest
from django.db import connection

from core.errors import InvalidRequest
from nodes.models import Node
from nodes.resources import Resources
from nodes.services import node_register
from tests.helpers import GiB, make_node

pytestmark = pytest.mark.django_db
SIZE = Resources(cpu=1000, memory=GiB)


def links(node_id: str) -> tuple[str | None, list[str]]:
    node = Node.objects.select_related("parent").get(node_id=node_id)
    return (node.parent.node_id if node.parent else None), sorted(node.peers.values_list("node_id", flat=True))


def test_a_child_naming_a_parent_that_is_not_registered_yet_registers_and_waits_for_it():
    child = make_node("child", parent="p")
    assert child.parent is None and child.pending_parent == "p"
    make_node("p")
    child = Node.objects.get(node_id="child")
    assert child.parent.node_id == "p" and child.pending_parent == ""
    assert child.depth == 1 and child.path == f"/{child.parent.pk}/{child.pk}/"
    assert links("p") == (None, [])


def test_a_late_parent_takes_the_waiting_childs_subtree_with_it():
    make_node("mid", parent="root")
    make_node("leaf", parent="mid")
    root = make_node("root")
    leaf = Node.objects.get(node_id="leaf")
    assert leaf.depth == 2 and leaf.path.startswith(root.path)


def test_peers_named_before_they_registered_are_linked_both_ways_when_they_do():
    make_node("a", peers=("b", "c"))
    assert Node.objects.get(node_id="a").pending_peers == ["b", "c"]
    make_node("b")
    assert links("a") == (None, ["b"]) and links("b") == (None, ["a"])
    assert Node.objects.get(node_id="a").pending_peers == ["c"]
    make_node("c")
    assert links("a") == (None, ["b", "c"]) and Node.objects.get(node_id="a").pending_peers == []


def test_a_parent_named_by_address_and_port_is_linked_when_a_node_registers_there():
    node_register(node_id="child", capacity=SIZE, parent="10.0.0.1:8080", peers=["10.0.0.2:9000"])
    node_register(node_id="elsewhere", address="10.0.0.9", port=8080, capacity=SIZE)
    assert links("child") == (None, [])
    node_register(node_id="parent", address="10.0.0.1", port=8080, capacity=SIZE)
    node_register(node_id="peer", address="10.0.0.2", port=9000, capacity=SIZE)
    assert links("child") == ("parent", ["peer"])
    child = Node.objects.get(node_id="child")
    assert child.pending_parent == "" and child.pending_peers == []


def test_a_loopback_name_is_linked_to_a_node_that_listens_everywhere():
    node_register(node_id="child", capacity=SIZE, parent="127.0.0.1:7000")
    node_register(node_id="parent", address="0.0.0.0", port=7000, capacity=SIZE)
    assert links("child") == ("parent", [])


def test_registering_again_with_the_parent_found_or_dropped_forgets_the_pending_name():
    make_node("child", parent="p")
    make_node("child")  # its config no longer names a parent
    assert Node.objects.get(node_id="child").pending_parent == ""
    make_node("p")
    assert links("child") == (None, [])


def test_a_late_parent_that_would_make_a_cycle_is_not_linked_and_is_forgotten():
    make_node("a", parent="b")  # a waits for b
    make_node("b", parent="a")  # b names a, which is registered: b goes under a at once
    a, b = Node.objects.get(node_id="a"), Node.objects.get(node_id="b")
    assert b.parent_id == a.pk
    assert a.parent is None and a.pending_parent == ""  # a under b would be a cycle: refused, forgotten
    assert a.depth == 0 and b.depth == 1


def test_a_registered_parent_still_links_at_once_and_a_cycle_is_still_refused():
    make_node("root")
    make_node("kid", parent="root")
    assert links("kid") == ("root", [])
    with pytest.raises(InvalidRequest, match="cycle"):
        make_node("root", parent="kid")


@pytest.mark.django_db(transaction=True)
def test_two_nodes_naming_each_other_and_registering_at_once_are_linked():
    for attempt in range(5):
        names = (f"x{attempt}", f"y{attempt}")
        barrier = threading.Barrier(2)

        def register(node_id: str, other: str, barrier=barrier) -> None:
            try:
                barrier.wait()
                node_register(node_id=node_id, capacity=SIZE, peers=[other])
            finally:
                connection.close()

        threads = [threading.Thread(target=register, args=pair) for pair in (names, names[::-1])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert links(names[0]) == (None, [names[1]]) and links(names[1]) == (None, [names[0]])
        assert not Node.objects.filter(node_id__in=names).exclude(pending_peers=[]).exists()


def test_a_node_cannot_name_itself_as_its_parent_and_naming_itself_a_peer_is_ignored():
    with pytest.raises(InvalidRequest, match="own parent"):
        make_node("narcissus", parent="narcissus")
    node = make_node("narcissus", peers=("narcissus",))
    assert node.pending_peers == [] and links("narcissus") == (None, [])
