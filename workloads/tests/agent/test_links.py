"""An agent whose parent or peers have not registered yet starts anyway and links later."""

import uuid
from pathlib import Path

import pytest
from django.conf import settings

from nodes.models import Node
from nodes.resources import Resources
from tests.helpers import make_node
from workloads.agent.agent import Agent, AgentSettings
from workloads.executors.limits import CGROUP_ROOT

CREATED: list[str] = []


@pytest.fixture(autouse=True)
def remove_node_cgroups():
    """An Agent probes cgroups by creating cnet/<node_id>; take those folders away again."""
    yield
    while CREATED:
        node_id = CREATED.pop()
        for base in ("", "memory", "cpu"):
            try:
                (CGROUP_ROOT / base / "cnet" / node_id).rmdir()
            except OSError:
                pass


def agent_for(node_id: str, *, port: int, parent=None, peers=(), **overrides) -> Agent:
    """An in-process agent for a 1-CPU, 1 GiB node (its cgroup folders removed after the test)."""
    data_dir = Path(settings.DATA_DIR)
    CREATED.append(node_id)
    return Agent(AgentSettings(
        node_id=node_id, address="127.0.0.1", port=port, capacity=Resources(cpu=1000, gpu=0, memory=2**30, storage=0),
        parent=parent, peers=list(peers), labels={}, work_dir=data_dir, data_dir=data_dir,
        capabilities={"process": {"available": True}}, **overrides,
    ))


@pytest.mark.django_db
def test_missing_parent_and_peer_do_not_stop_registration_and_are_linked_once_they_register():
    suffix = uuid.uuid4().hex[:6]
    agent = agent_for(f"kid-{suffix}", port=18321, parent="127.0.0.1:18322", peers=[f"friend-{suffix}"])
    node = agent.register()
    assert node.parent is None and not node.peers.exists()
    assert agent.pending_links == [("parent", "127.0.0.1:18322"), ("peer", f"friend-{suffix}")]
    assert agent.heartbeat_once() and agent.pending_links  # still nobody to link to: no error

    parent = agent_for(f"dad-{suffix}", port=18322).register()
    make_node(f"friend-{suffix}")
    agent.heartbeat_once()
    node = Node.objects.get(node_id=f"kid-{suffix}")
    assert node.parent == parent and node.path == f"{parent.path}{node.pk}/"
    assert list(node.peers.values_list("node_id", flat=True)) == [f"friend-{suffix}"]
    assert agent.pending_links == []


@pytest.mark.django_db
def test_a_loopback_name_finds_a_node_that_advertises_the_wildcard_address():
    from workloads.agent.agent import resolve_link

    wildcard = agent_for("wild", port=18323)
    wildcard.config.address = "0.0.0.0"
    node = wildcard.register()
    assert resolve_link("127.0.0.1:18323") == node
    assert resolve_link("localhost:18323") == node
    assert resolve_link("10.0.0.9:18323") is None


@pytest.mark.django_db
def test_a_node_is_never_its_own_parent_even_when_its_stale_row_has_the_parents_address():
    suffix = uuid.uuid4().hex[:6]
    agent_for(f"moved-{suffix}", port=18331).register()  # last run advertised 18331 ...
    agent = agent_for(f"moved-{suffix}", port=18332, parent="127.0.0.1:18331")  # ... now its parent does
    node = agent.register()
    assert node.parent is None and agent.pending_links == [("parent", "127.0.0.1:18331")]
    parent = agent_for(f"real-parent-{suffix}", port=18331).register()
    agent.heartbeat_once()
    assert Node.objects.get(node_id=f"moved-{suffix}").parent == parent


@pytest.mark.django_db
def test_a_parent_link_that_would_make_a_cycle_is_ignored_not_fatal():
    suffix = uuid.uuid4().hex[:6]
    top = agent_for(f"top-{suffix}", port=18333)
    top.register()
    agent_for(f"low-{suffix}", port=18334, parent=f"top-{suffix}").register()
    top.config.parent = f"low-{suffix}"
    assert top.register().parent is None
