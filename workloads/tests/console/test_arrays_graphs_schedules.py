"""The console's pages for arrays, dependency graphs and schedules, through Django's test client
(no browser): an array is one row with a progress bar in the workload list and has its own page;
the graph page draws every workload and array of a graph with its status and every dependency as
an edge; a schedule's page shows its next five runs, and pauses and resumes it."""

import re
from datetime import UTC, datetime

import pytest
import time_machine

from tests.helpers import GiB, make_node
from workloads.models import Schedule, Workload, WorkloadArray, WorkloadStatus
from workloads.services import workload_transition

pytestmark = pytest.mark.django_db
S = WorkloadStatus
PROCESS = {"type": "process", "requirements": {"cpu": 0.1, "memory": 67108864}, "config": {"command": "true"}}
LIST = "/admin/workloads/workload/"


@pytest.fixture(autouse=True)
def local_node():
    make_node("local", cpu=4, memory=8 * GiB)


def submit(api, **body) -> dict:
    response = api.post("/api/workloads", PROCESS | body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def end(array_id, index: int, status: str) -> None:
    workload = Workload.objects.get(array_id=array_id, array_index=index)
    workload_transition(workload_id=workload.pk, to=S.RUNNING)
    workload_transition(workload_id=workload.pk, to=status)


def row_of(html: str, text: str) -> str:
    """The list's table row holding ``text``."""
    rows = re.findall(r"<tr[^>]*>.*?</tr>", html, flags=re.S)
    return next(row for row in rows if text in row)


def test_an_array_is_one_row_with_its_progress_in_the_workload_list(api, staff_client, django_assert_max_num_queries):
    array = submit(api, name="sweep", count=6)
    submit(api, name="single")
    end(array["id"], 0, S.SUCCEEDED)
    end(array["id"], 1, S.SUCCEEDED)
    end(array["id"], 2, S.FAILED)
    with django_assert_max_num_queries(12):
        response = staff_client.get(LIST)
    html = response.content.decode()
    assert response.context["cl"].result_count == 2  # the array and the single workload
    row = row_of(html, f"/admin/workloads/workload/arrays/{array['id']}/")
    assert "sweep</a>" in row and "[6] array" in row
    assert 'data-ended="3" data-total="6"' in row and "3 / 6 ended · 50%" in row
    segments = dict(re.findall(r'data-status="(\w+)" data-count="(\d+)"', row))
    assert segments == {"succeeded": "2", "failed": "1", "scheduled": "3"}
    assert 'badge s-scheduled' in row  # not all ended: the furthest any got
    assert "single" in html and "sweep-4" not in html


def test_a_filter_lists_an_arrays_matching_instances_one_by_one(api, staff_client):
    array = submit(api, name="sweep", count=4)
    end(array["id"], 3, S.FAILED)
    response = staff_client.get(LIST + "?status__exact=failed")
    assert [w.name for w in response.context["cl"].result_list] == ["sweep-3"]


def test_an_arrays_page_shows_its_progress_instances_and_stops_it(api, staff_client):
    array = submit(api, name="sweep", count=3)
    end(array["id"], 1, S.SUCCEEDED)
    page = staff_client.get(f"{LIST}arrays/{array['id']}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-ended="1" data-total="3"' in html
    instances = re.search(r'id="array-instances".*?</table>', html, flags=re.S).group(0)
    assert [name for name in re.findall(r">(sweep-\d)<", instances)] == ["sweep-0", "sweep-1", "sweep-2"]
    assert "placed" in html  # its placement batch
    stopped = staff_client.post(f"{LIST}arrays/{array['id']}/")
    assert stopped.status_code == 302
    assert set(Workload.objects.filter(array_id=array["id"]).values_list("status", flat=True)) == {
        S.STOPPED, S.SUCCEEDED}


def test_the_graph_page_draws_every_node_with_its_status_and_every_dependency(api, staff_client):
    graph = api.post("/api/workloads", {"workloads": [
        PROCESS | {"key": "prep", "name": "prep"},
        PROCESS | {"key": "sweep", "name": "sweep", "count": 4, "depends_on": [{"workload": "prep"}]},
        PROCESS | {"key": "report", "name": "report", "depends_on": [{"workload": "sweep", "condition": "ended"}]},
        PROCESS | {"name": "cleanup", "depends_on": [{"workload": "prep", "condition": "failed"}]},
    ]}, format="json")
    assert graph.status_code == 201, graph.content
    prep, sweep, report, cleanup = (item["id"] for item in graph.json()["workloads"])
    workload_transition(workload_id=prep, to=S.RUNNING)
    workload_transition(workload_id=prep, to=S.SUCCEEDED)  # cleanup can never run now; sweep is placed

    page = staff_client.get(f"{LIST}graph/w/{report}/")
    assert page.status_code == 200
    svg = re.search(r'<svg class="dag".*?</svg>', page.content.decode(), flags=re.S).group(0)
    nodes = {node: (kind, status, int(layer)) for node, kind, status, layer in re.findall(
        r'data-node="([^"]+)" data-kind="(\w+)" data-status="(\w+)" data-layer="(\d+)"', svg)}
    assert nodes == {
        prep: ("workload", "succeeded", 0), sweep: ("array", "scheduled", 1), report: ("workload", "pending", 2),
        cleanup: ("workload", "failed", 1),
    }
    edges = set(re.findall(r'data-edge="([^"]+)" data-condition="(\w+)" data-state="(\w+)"', svg))
    assert edges == {(f"{prep}->{sweep}", "succeeded", "met"), (f"{sweep}->{report}", "ended", "waiting"),
                     (f"{prep}->{cleanup}", "failed", "never")}
    assert f"/admin/workloads/workload/arrays/{sweep}/" in svg and f"/admin/workloads/workload/{report}/" in svg
    # Each page of the graph links to it.
    assert f"graph/w/{report}/" in staff_client.get(f"{LIST}{report}/change/").content.decode()
    assert f"graph/a/{sweep}/" in staff_client.get(f"{LIST}arrays/{sweep}/").content.decode()
    assert staff_client.get(f"{LIST}graph/a/{sweep}/").status_code == 200


def test_others_arrays_graphs_and_schedules_do_not_exist_for_a_user(api, client, user):
    array = submit(api, name="sweep", count=2)
    schedule = api.post("/api/schedules", PROCESS | {"name": "nightly", "schedule": "@daily"}, format="json").json()
    client.force_login(user)
    assert client.get(f"{LIST}arrays/{array['id']}/").status_code == 404
    assert client.get(f"{LIST}graph/a/{array['id']}/").status_code == 404
    assert client.get(f"/admin/workloads/schedule/{schedule['id']}/change/").status_code == 404
    assert client.post(f"/admin/workloads/schedule/{schedule['id']}/pause-resume/").status_code == 404
    assert WorkloadArray.objects.count() == 1 and Schedule.objects.get().paused_at is None


def test_a_schedules_page_shows_its_next_five_runs_and_pauses_and_resumes_it(api, staff_client):
    with time_machine.travel(datetime(2026, 12, 1, 11, 58, tzinfo=UTC), tick=False):
        schedule = api.post("/api/schedules", PROCESS | {"name": "nightly", "schedule": "*/15 * * * *",
                                                         "timezone": "Europe/Berlin"}, format="json").json()
        listed = staff_client.get("/admin/workloads/schedule/").content.decode()
        assert "nightly" in listed and "*/15 * * * *" in listed and "2026-12-01 12:00" in listed
        detail = f"/admin/workloads/schedule/{schedule['id']}/change/"
        html = staff_client.get(detail).content.decode()
        runs = re.search(r'id="next-runs">(.*?)</ol>', html, flags=re.S).group(1)
        assert re.findall(r">([\d-]+ [\d:]+)</time>", runs) == [
            "2026-12-01 12:00", "2026-12-01 12:15", "2026-12-01 12:30", "2026-12-01 12:45", "2026-12-01 13:00"]
        assert staff_client.post(f"/admin/workloads/schedule/{schedule['id']}/pause-resume/").status_code == 302
        assert Schedule.objects.get().paused_at is not None
        assert "none while paused" in staff_client.get(detail).content.decode()
        staff_client.post(f"/admin/workloads/schedule/{schedule['id']}/pause-resume/")
        assert Schedule.objects.get().paused_at is None
