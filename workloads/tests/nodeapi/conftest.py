"""Nodes with real credentials, and clients that speak for them as an agent does."""

import pytest
from rest_framework.test import APIClient

from nodes.resources import Resources
from nodes.services import join_token_create, node_join
from tests.helpers import GiB, make_node
from workloads.models import Workload
from workloads.services import workload_submit

PROCESS = {"command": "sleep", "args": ["60"]}


def node_client(credential: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {credential}")
    return client


@pytest.fixture
def agent_for(db):
    """``agent_for(node_id, **make_node options)``: register the node as an agent would, join it
    with a join token, and return an API client holding its credential (``.node`` is its row)."""
    def make(node_id: str, **options) -> APIClient:
        node = make_node(node_id, **options)
        client = node_client(node_join(token=join_token_create(), node_id=node_id))
        client.node = node
        return client

    return make


def submit(node: str, *, name: str = "w", owner=None, **options):
    """A workload submitted at ``node``; placed there when it has room."""
    return workload_submit(owner=owner, name=name, type="process", config=PROCESS,
                           requirements=Resources(cpu=1000, memory=GiB),
                           node=node, **options)


def report_item(workload, status: str, *, epoch: int, **extra) -> dict:
    """One report as an agent sends it, about the workload's current run."""
    scheduled_at = Workload.objects.values_list("scheduled_at", flat=True).get(pk=workload.pk)
    return {"workload_id": str(workload.pk), "status": status, "epoch": epoch,
            "scheduled_at": scheduled_at.isoformat()} | extra
