"""The admin (Web UI) workload pages, as a staff user sees them."""

import pytest

from nodes.resources import Resources
from tests.helpers import GiB, make_node
from workloads.services import workload_submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def cluster(admin_user):
    make_node("local", cpu=4, memory=8 * GiB)
    make_node("child-1", parent="local")
    for name in ("alpha-train", "beta-serve"):
        workload_submit(owner=admin_user, name=name, type="process", config={"command": "true"},
                        requirements=Resources(cpu=500, memory=GiB))


def test_workload_changelist_renders_with_filters_and_search(staff_client, cluster):
    response = staff_client.get("/admin/workloads/workload/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "alpha-train" in html and "beta-serve" in html
    assert 'id="changelist-filter"' in html
    searched = staff_client.get("/admin/workloads/workload/?q=alpha")
    assert searched.status_code == 200 and searched.context["cl"].result_count == 1
    by_status = staff_client.get("/admin/workloads/workload/?status__exact=scheduled&type__exact=process")
    assert by_status.status_code == 200 and by_status.context["cl"].result_count == 2
    by_owner_search = staff_client.get("/admin/workloads/workload/?q=root")
    assert by_owner_search.status_code == 200 and by_owner_search.context["cl"].result_count == 2


def test_workload_change_page_shows_its_events(staff_client, cluster):
    from workloads.models import Workload

    workload = Workload.objects.get(name="alpha-train")
    response = staff_client.get(f"/admin/workloads/workload/{workload.pk}/change/")
    assert response.status_code == 200
    assert "submitted" in response.content.decode()


def test_a_pending_workloads_page_shows_its_queue_place_and_its_live_facts_follow_the_queue(staff_client, admin_user):
    from workloads.models import Workload
    from workloads.services import workload_stop

    make_node("local", cpu=1, memory=8 * GiB)
    holder, first, second = (
        workload_submit(owner=admin_user, name=name, type="process", config={"command": "true"},
                        requirements=Resources(cpu=1000, memory=GiB))
        for name in ("holder", "first", "second"))
    Workload.objects.filter(pk=holder.pk).update(status="running", max_runtime_seconds=None)
    page = staff_client.get(f"/admin/workloads/workload/{second.pk}/change/").content.decode()
    assert "<b>#2</b> of 2 pending at priority 0" in page and "1 placed before it" in page
    assert "unknown <span class=\"muted small\">work in its way has no time limit" in page

    workload_stop(workload=first)
    live = staff_client.get(f"/admin/workloads/workload/{second.pk}/live/").json()
    assert live["status"] == "pending" and "<b>#1</b> of 1 pending" in live["facts"]
    assert 'id="wl-queue"' not in staff_client.get(f"/admin/workloads/workload/{holder.pk}/live/").json()["facts"]
