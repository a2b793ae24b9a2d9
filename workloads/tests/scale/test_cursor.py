"""``?cursor=`` on /api/workloads (issue 16, point 8): every row once, newest first, ties of
``created_at`` broken by id; announced in the ``Link`` header; no count per page; bad use refused."""

import re
from datetime import UTC, datetime

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.helpers import GiB, make_node

pytestmark = pytest.mark.django_db
BODY = {"type": "process", "requirements": {"cpu": 0.01, "memory": 1048576}, "config": {"command": "true"}}


@pytest.fixture
def workloads(api):
    make_node("local", cpu=64, memory=64 * GiB)
    with time_machine.travel(datetime(2026, 12, 1, 12, 0, tzinfo=UTC), tick=False):
        # An array's instances share one created_at here: the cursor must break the ties.
        assert api.post("/api/workloads", BODY | {"name": "tied", "count": 7}, format="json").status_code == 201
    for minute in range(1, 6):
        with time_machine.travel(datetime(2026, 12, 1, 12, minute, tzinfo=UTC), tick=False):
            assert api.post("/api/workloads", BODY | {"name": f"single-{minute}"}, format="json").status_code == 201
    return [w["id"] for w in api.get("/api/workloads?limit=100").json()]


def link(response, rel: str) -> str | None:
    match = re.search(rf'<([^>]+)>; rel="{rel}"', response.headers.get("Link", ""))
    return match.group(1).replace("http://testserver", "") if match else None


def test_a_cursor_walks_every_row_once_newest_first(api, workloads):
    seen, url, pages = [], "/api/workloads?cursor=&limit=3", 0
    while url:
        with CaptureQueriesContext(connection) as queries:
            response = api.get(url)
        assert response.status_code == 200, response.content
        assert "X-Total-Count" not in response.headers
        assert not any("COUNT(" in query["sql"] for query in queries.captured_queries)
        seen += [w["id"] for w in response.json()]
        url, pages = link(response, "next"), pages + 1
    assert seen == workloads and pages == 4  # 12 rows, 3 a page; the last page names no next


def test_an_offset_page_announces_the_cursor_after_it(api, workloads):
    response = api.get("/api/workloads?limit=4&offset=4")
    assert response.headers["X-Total-Count"] == "12"
    following = api.get(link(response, "cursor"))
    assert [w["id"] for w in following.json()] == workloads[8:12]
    assert link(following, "next") is None
    assert link(api.get("/api/workloads?limit=4&offset=8"), "cursor") is None  # nothing after the last page


def test_a_cursor_keeps_the_filters(api, workloads):
    first = api.get("/api/workloads?cursor=&limit=4&name=tied")
    second = api.get(link(first, "next"))
    names = [w["name"] for w in first.json() + second.json()]
    assert sorted(names) == sorted(f"tied-{i}" for i in range(7))
    assert "name=tied" in link(first, "next")


@pytest.mark.parametrize("query", ["cursor=nonsense!", "cursor=bm9ufGlk", "cursor=&offset=5", "cursor=&ordering=name"])
def test_bad_cursor_use_is_400_naming_it(api, workloads, query):
    response = api.get(f"/api/workloads?{query}")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith("cursor")


def test_totals_by_status_and_type_come_exact_from_the_kept_counts(api, workloads):
    for query, expected in (("", 12), ("?status=scheduled", 12), ("?status=running&status=scheduled", 12),
                            ("?status=failed", 0), ("?type=process&status=scheduled", 12), ("?type=container", 0),
                            ("?name=tied", 7), ("?name=single-3", 1)):
        response = api.get(f"/api/workloads{query}")
        assert response.headers["X-Total-Count"] == str(expected), query
        assert len(response.json()) == expected


def test_one_arrays_instances_are_listed_by_index(api, workloads):
    array = api.get("/api/arrays").json()[0]["id"]
    response = api.get(f"/api/workloads?array={array}&limit=4")
    assert [w["array_index"] for w in response.json()] == [0, 1, 2, 3]
    assert link(response, "cursor") is None and link(response, "next")  # an offset link, not a cursor
