"""An agent whose parent or peers have not registered yet starts anyway and links later."""

import uuid

import pytest

from nodes.models import Node
from nodes.selectors import node_find
from tests.helpers import free_port, make_node


@pytest.mark.django_db
def test_missing_parent_and_peer_do_not_stop_registration_and_are_linked_once_they_register(make_agent):
    suffix, parent_port = uuid.uuid4().hex[:6], free_port()
    agent = make_agent(f"kid-{suffix}", parent=f"127.0.0.1:{parent_port}", peers=[f"friend-{suffix}"])
    node = agent.register()
    assert node.parent is None and not node.peers.exists()
    assert agent.pending_links == [("parent", f"127.0.0.1:{parent_port}"), ("peer", f"friend-{suffix}")]
    assert agent.heartbeat_once() and agent.pending_links  # still nobody to link to: no error

    parent = make_agent(f"dad-{suffix}", port=parent_port).register()
    make_node(f"friend-{suffix}")
    agent.heartbeat_once()
    node = Node.objects.get(node_id=f"kid-{suffix}")
    assert node.parent == parent and node.path == f"{parent.path}{node.pk}/"
    assert list(node.peers.values_list("node_id", flat=True)) == [f"friend-{suffix}"]
    assert agent.pending_links == []


@pytest.mark.django_db
def test_a_loopback_name_finds_a_node_that_advertises_the_wildcard_address(make_agent):
    wildcard = make_agent("wild")
    wildcard.config.address = "0.0.0.0"
    node = wildcard.register()
    port = wildcard.config.port
    assert node_find(f"127.0.0.1:{port}") == node
    assert node_find(f"localhost:{port}") == node
    assert node_find(f"10.0.0.9:{port}") is None


@pytest.mark.django_db
def test_a_node_is_never_its_own_parent_even_when_its_stale_row_has_the_parents_address(make_agent):
    suffix, old = uuid.uuid4().hex[:6], free_port()
    make_agent(f"moved-{suffix}", port=old).register()  # last run advertised this port ...
    agent = make_agent(f"moved-{suffix}", parent=f"127.0.0.1:{old}")  # ... now its parent does
    node = agent.register()
    assert node.parent is None and agent.pending_links == [("parent", f"127.0.0.1:{old}")]
    parent = make_agent(f"real-parent-{suffix}", port=old).register()
    agent.heartbeat_once()
    assert Node.objects.get(node_id=f"moved-{suffix}").parent == parent


@pytest.mark.django_db
def test_a_parent_link_that_would_make_a_cycle_is_ignored_not_fatal(make_agent):
    suffix = uuid.uuid4().hex[:6]
    top = make_agent(f"top-{suffix}")
    top.register()
    make_agent(f"low-{suffix}", parent=f"top-{suffix}").register()
    top.config.parent = f"low-{suffix}"
    assert top.register().parent is None
