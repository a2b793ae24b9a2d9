"""The admin (Web UI) node changelist, as a staff user sees it."""

import pytest

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
