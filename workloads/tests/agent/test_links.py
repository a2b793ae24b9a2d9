"""An agent whose parent or peers have not registered yet starts anyway; the control plane links
them once they register."""

import uuid

import pytest

from nodes.models import Node
from nodes.selectors import node_find
from tests.helpers import free_port, make_node

pytestmark = pytest.mark.django_db(transaction=True)


def row(node_id: str) -> Node:
    return Node.objects.get(node_id=node_id)


def test_missing_parent_and_peer_do_not_stop_registration_and_are_linked_once_they_register(make_agent):
    suffix, parent_port = uuid.uuid4().hex[:6], free_port()
    agent = make_agent(f"kid-{suffix}", parent=f"127.0.0.1:{parent_port}", peers=[f"friend-{suffix}"])
    agent.register()
    node = row(f"kid-{suffix}")
    assert node.parent is None and not node.peers.exists()
    assert agent.heartbeat_once()  # still nobody to link to: no error

    make_agent(f"dad-{suffix}", port=parent_port).register()
    parent = row(f"dad-{suffix}")
    make_node(f"friend-{suffix}")
    agent.heartbeat_once()
    node = row(f"kid-{suffix}")
    assert node.parent == parent and node.path == f"{parent.path}{node.pk}/"
    assert list(node.peers.values_list("node_id", flat=True)) == [f"friend-{suffix}"]


def test_a_loopback_name_finds_a_node_that_advertises_the_wildcard_address(make_agent):
    wildcard = make_agent("wild")
    wildcard.config.address = "0.0.0.0"
    wildcard.register()
    port = wildcard.config.port
    assert node_find(f"127.0.0.1:{port}") == row("wild")
    assert node_find(f"localhost:{port}") == row("wild")
    assert node_find(f"10.0.0.9:{port}") is None


def test_a_node_is_never_its_own_parent_even_when_its_stale_row_has_the_parents_address(make_agent):
    suffix, old = uuid.uuid4().hex[:6], free_port()
    make_agent(f"moved-{suffix}", port=old).register()  # last run advertised this port ...
    agent = make_agent(f"moved-{suffix}", parent=f"127.0.0.1:{old}")  # ... now its parent does
    agent.register()
    assert row(f"moved-{suffix}").parent is None
    make_agent(f"real-parent-{suffix}", port=old).register()
    agent.heartbeat_once()
    assert row(f"moved-{suffix}").parent == row(f"real-parent-{suffix}")


def test_a_parent_link_that_would_make_a_cycle_is_ignored_not_fatal(make_agent):
    suffix = uuid.uuid4().hex[:6]
    top = make_agent(f"top-{suffix}")
    top.register()
    make_agent(f"low-{suffix}", parent=f"top-{suffix}").register()
    top.config.parent = f"low-{suffix}"
    top.register()
    assert row(f"top-{suffix}").parent is None
