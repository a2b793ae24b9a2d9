"""The admin (Web UI) node changelist, as a staff user sees it."""

import pytest

from nodes.models import Node
from nodes.resources import Resources
from nodes.services import node_allocate
from tests.helpers import make_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def cluster():
    make_node("local")
    make_node("child-1", parent="local")


def test_node_changelist_renders_with_filters_and_search(staff_client, cluster):
    response = staff_client.get("/admin/nodes/node/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "local" in html and "child-1" in html
    assert 'id="changelist-filter"' in html
    searched = staff_client.get("/admin/nodes/node/?q=child")
    assert searched.status_code == 200
    assert "child-1" in searched.content.decode()
    assert searched.context["cl"].result_count == 1
    filtered = staff_client.get("/admin/nodes/node/?status__exact=draining")
    assert filtered.status_code == 200 and filtered.context["cl"].result_count == 0


def test_deleting_an_idle_node_goes_through_the_service(staff_client, cluster):
    child = Node.objects.get(node_id="child-1")
    response = staff_client.post(f"/admin/nodes/node/{child.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Node.objects.filter(node_id="child-1").exists()


def test_a_node_holding_work_is_not_deleted_and_the_console_says_why(staff_client, cluster):
    local = Node.objects.get(node_id="local")
    node_allocate(node_pk=local.pk, requirements=Resources(cpu=1000))
    response = staff_client.post(f"/admin/nodes/node/{local.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.redirect_chain[-1][0] == f"/admin/nodes/node/{local.pk}/change/"
    assert "holds work (cpu_allocated_millicores 1000 allocated)" in response.content.decode()
    assert Node.objects.filter(node_id="local").exists()
    assert Node.objects.get(node_id="child-1").parent_id == local.pk  # nothing moved either
