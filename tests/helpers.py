"""Shared test helpers: polling with a deadline and node builders."""

import time

from nodes.models import Node
from nodes.resources import Resources
from nodes.services import node_register

GiB = 1024**3


def wait_for(predicate, timeout: float = 10.0, every: float = 0.05, message: str = "condition"):
    """Poll until ``predicate()`` is truthy; return its value. Never sleep-and-hope."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{message} not met within {timeout}s")


def make_node(node_id: str, *, cpu: float = 4, memory: int = 8 * GiB, gpu: int = 0, storage: int = 100 * GiB,
              parent: str | None = None, peers: tuple[str, ...] = (), capabilities: dict | None = None) -> Node:
    """Register a node the way an agent does (cpu in cores, memory in bytes)."""
    return node_register(
        node_id=node_id,
        capacity=Resources(cpu=round(cpu * 1000), gpu=gpu, memory=memory, storage=storage),
        parent=parent,
        peers=peers,
        capabilities=capabilities if capabilities is not None else {"process": {"available": True}},
    )
