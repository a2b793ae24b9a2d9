"""Cross-app API plumbing: auth, health, stats, schema and docs, the browsable API."""

import re

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from cnetsite.celery import app as celery_app
from nodes.resources import Resources
from nodes.services import node_allocate
from tests.helpers import GiB, make_node
from workloads.models import Workload
from workloads.tests.api.seeds import SEED_PROCESS

pytestmark = pytest.mark.django_db

WORKLOAD_ID = "00000000-0000-0000-0000-000000000001"
ENDPOINTS = [
    ("get", "/api/workloads"),
    ("post", "/api/workloads"),
    ("get", f"/api/workloads/{WORKLOAD_ID}"),
    ("delete", f"/api/workloads/{WORKLOAD_ID}"),
    ("get", f"/api/workloads/{WORKLOAD_ID}/logs?lines=10"),
    ("post", f"/api/workloads/{WORKLOAD_ID}/stop"),
    ("get", "/api/resources"),
    ("get", "/api/resources/stats"),
    ("get", "/api/nodes"),
    ("get", "/api/nodes/local"),
    ("get", "/api/health"),
    ("get", "/api/schema/"),
    ("get", "/api/docs/"),
]


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_anonymous_requests_get_401_everywhere(method, path):
    make_node("local")
    response = getattr(APIClient(), method)(path, SEED_PROCESS if method == "post" else None, format="json")
    assert response.status_code == 401, (path, response.status_code)
    assert Workload.objects.count() == 0


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "bearer"])
def test_token_auth_accepts_token_and_bearer_schemes(user, scheme):
    make_node("local")
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {token.key}")
    assert client.get("/api/workloads").status_code == 200
    response = client.post("/api/workloads", SEED_PROCESS, format="json")
    assert response.status_code == 201
    assert response.json()["owner"] == "alice"


def test_a_wrong_token_is_401():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert client.get("/api/workloads").status_code == 401


def test_session_auth_works_with_csrf_enforced(user):
    make_node("local")
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="alice", password="pw")
    assert client.get("/api/workloads").status_code == 200
    # A session is a browser: writes need the CSRF token, as Django's session auth always does.
    assert client.post("/api/workloads", SEED_PROCESS, format="json").status_code == 403
    page = client.get("/api/workloads", HTTP_ACCEPT="text/html")
    csrf = page.cookies["csrftoken"].value
    response = client.post("/api/workloads", SEED_PROCESS, format="json", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 201
    assert Workload.objects.get().owner == user


def test_the_browsable_api_renders_for_a_logged_in_user(client, user):
    make_node("local")
    client.login(username="alice", password="pw")
    for path in ("/api/workloads", "/api/nodes", "/api/resources", "/api/resources/stats"):
        response = client.get(path, HTTP_ACCEPT="text/html")
        assert response.status_code == 200, path
        assert response["Content-Type"].startswith("text/html")
        assert b"Django REST framework" in response.content
        assert b"alice" in response.content


def test_health_is_200_when_database_and_broker_answer(api):
    response = api.get("/api/health")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


@pytest.fixture
def broker_down(monkeypatch):
    """Point the real Celery app at a port where nothing listens, then put it back."""
    saved = celery_app.conf.broker_url, celery_app.conf.broker_transport_options
    # Celery reads CELERY_BROKER_URL from the environment before its own conf.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"
    celery_app.conf.broker_transport_options = {}
    yield
    celery_app.conf.broker_url, celery_app.conf.broker_transport_options = saved


def test_health_is_503_naming_the_broker_when_it_is_unreachable(api, broker_down):
    response = api.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] != "ok"
    assert "broker" in body["detail"]


def test_stats_sum_capacity_allocated_free_and_count_nodes_and_workloads(api):
    local = make_node("local", cpu=4, memory=8 * GiB)
    make_node("child-1", parent="local", cpu=2, memory=4 * GiB)
    make_node("child-2", parent="local", cpu=2, memory=4 * GiB)
    node_allocate(node_pk=local.pk, requirements=Resources(cpu=1000, memory=GiB))
    api.post("/api/workloads", SEED_PROCESS, format="json")
    body = api.get("/api/resources/stats").json()
    assert body["capacity"]["cpu"] == 8.0 and body["capacity"]["memory"] == 16 * GiB
    assert body["allocated"]["cpu"] == 2.0 and body["allocated"]["memory"] == GiB + 536870912
    assert body["free"]["cpu"] == 6.0
    assert body["nodes"]["ready"] == 3 and body["nodes"]["total"] == 3
    assert body["workloads"]["scheduled"] == 1 and body["workloads"]["total"] == 1
    assert "usage" in body


@pytest.mark.parametrize("path", ["/api/schema/", "/api/schema"])
def test_the_schema_is_openapi_3_and_lists_the_seed_paths(api, path):
    response = api.get(path, HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for seed_path in ("/api/workloads", "/api/workloads/{id}", "/api/workloads/{id}/logs",
                      "/api/workloads/{id}/stop", "/api/resources", "/api/resources/stats", "/api/nodes",
                      "/api/health"):
        assert any(p.rstrip("/") == seed_path for p in schema["paths"]), seed_path


@pytest.mark.parametrize("path", ["/api/docs/", "/api/docs"])
def test_the_docs_page_needs_no_internet(api, path):
    response = api.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger" in html.lower()
    remote = re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//[^"']+""", html)
    assert remote == [], remote
    for asset in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+\.(?:js|css))""", html):
        assert api.get(asset).status_code == 200, asset


def test_the_docs_page_works_for_a_session_user(client, user):
    client.login(username="alice", password="pw")
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/api/schema/", HTTP_ACCEPT="application/json").status_code == 200


def test_error_bodies_carry_a_one_line_detail_naming_the_field(api):
    make_node("local")
    response = api.post("/api/workloads", {**SEED_PROCESS, "config": {"args": [1]}}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith("config.")
    assert "config" in body


def test_an_inactive_users_token_is_refused():
    user = get_user_model().objects.create_user("gone", password="pw", is_active=False)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert client.get("/api/workloads").status_code == 401
