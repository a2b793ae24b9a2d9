"""Issue 15, point 7: web defaults for production. A key is required outside embedded mode, secret
files are private from their first byte, hosts default to localhost, TLS settings come from the
environment (on in deploy/), health answers carry no exception text, the body limit covers all."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from cnetsite.celery import app as celery_app
from core.files import write_private_file

ROOT = Path(settings.BASE_DIR)


def settings_in_child(tmp_path, **env) -> subprocess.CompletedProcess:
    """Load ``cnetsite.settings`` in a fresh interpreter with only ``env`` (and PATH) set, and
    print the few settings these tests read."""
    code = ("from django.conf import settings as s; "
            "print(s.ALLOWED_HOSTS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, "
            "getattr(s, 'SECURE_PROXY_SSL_HEADER', None), s.CNET_EMBEDDED)")
    base = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "cnetsite.settings",
            "CNET_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base | env, capture_output=True, text=True,
                          timeout=60)


def test_a_server_database_without_a_secret_key_refuses_to_start(tmp_path):
    refused = settings_in_child(tmp_path, DATABASE_URL="postgres://cnet@db.internal:5432/cnet")
    assert refused.returncode != 0 and "SECRET_KEY (or SECRET_KEY_FILE) must be set" in refused.stderr
    assert not (tmp_path / "data" / "secret_key").exists()  # nothing generated in its place
    explicit = settings_in_child(tmp_path, CNET_EMBEDDED="false")
    assert explicit.returncode != 0 and "SECRET_KEY" in explicit.stderr
    given = settings_in_child(tmp_path, DATABASE_URL="postgres://cnet@db.internal:5432/cnet", SECRET_KEY="k" * 50)
    assert given.returncode == 0, given.stderr


def test_embedded_mode_generates_a_key_once_in_a_file_only_its_owner_reads(tmp_path):
    first = settings_in_child(tmp_path)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "data" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    assert settings_in_child(tmp_path).returncode == 0 and key_file.read_text() == key  # kept, not replaced
    assert not [p for p in key_file.parent.iterdir() if p.name.startswith(".secret_key")]  # no temporary left


def test_a_private_file_is_0600_whatever_the_umask_and_a_kept_one_is_not_replaced(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "admin_password"
        assert write_private_file(path, "first") == "first"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert write_private_file(path, "second", keep_existing=True) == "first"
        assert write_private_file(path, "third") == "third" and path.read_text() == "third"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_hosts_default_to_localhost_and_the_server_url_plus_what_is_configured(tmp_path):
    out = settings_in_child(tmp_path, ALLOWED_HOSTS="cnet.example.org", CNET_SERVER_URL="http://cp.internal:8000")
    assert out.stdout.startswith("['localhost', '127.0.0.1', '[::1]', 'cp.internal', 'cnet.example.org']"), out


@pytest.mark.django_db
def test_a_host_not_allowed_is_refused():
    assert APIClient().get("/api/health/live", HTTP_HOST="evil.example").status_code == 400
    assert APIClient().get("/api/health/live", HTTP_HOST="localhost").status_code == 200


def test_tls_settings_are_off_by_default_and_on_from_the_environment(tmp_path):
    default = settings_in_child(tmp_path)
    assert default.stdout.endswith("] False False 0 None True\n"), default.stdout
    on = settings_in_child(tmp_path, CNET_SECURE_COOKIES="true", CNET_HSTS_SECONDS="31536000",
                           CNET_PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert "True True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https') True" in on.stdout, on.stdout


def test_deploy_turns_the_tls_settings_on():
    example = dict(line.split("=", 1) for line in (ROOT / "deploy/cnet.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["CNET_SECURE_COOKIES"] == "true" and int(example["CNET_HSTS_SECONDS"]) >= 31536000
    assert example["CNET_PROXY_SSL_HEADER"] == "X-Forwarded-Proto" and example["CNET_NUM_PROXIES"] == "1"
    compose = (ROOT / "deploy/docker-compose.yml").read_text()
    for line in ('CNET_SECURE_COOKIES: "true"', "CNET_PROXY_SSL_HEADER: X-Forwarded-Proto", "/api/health/live"):
        assert line in compose


@pytest.mark.django_db
def test_behind_the_proxy_an_https_request_gets_hsts_and_a_secure_session_cookie(settings, client, user):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    assert "Strict-Transport-Security" not in client.get("/api/health/live")  # plain HTTP: no HSTS
    assert client.get("/api/health/live", HTTP_X_FORWARDED_PROTO="https")["Strict-Transport-Security"] == \
        "max-age=3600"
    login = client.post("/admin/login/", {"username": "alice", "password": "pw"}, HTTP_X_FORWARDED_PROTO="https")
    assert login.status_code == 302 and login.cookies["sessionid"]["secure"]


@pytest.fixture
def broker_down(monkeypatch):
    """The real Celery app pointed at a port where nothing listens, then put back."""
    saved = celery_app.conf.broker_url, celery_app.conf.broker_transport_options
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"
    celery_app.conf.broker_transport_options = {}
    yield
    celery_app.conf.broker_url, celery_app.conf.broker_transport_options = saved


@pytest.mark.django_db
def test_health_names_the_part_that_is_down_but_no_exception_text(api, broker_down):
    answer = api.get("/api/health")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unhealthy", "checks": {"database": "ok", "broker": "unreachable"},
                             "detail": "unreachable: broker"}


@pytest.mark.django_db
def test_health_live_answers_anyone_and_says_nothing_more():
    answer = APIClient().get("/api/health/live")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    assert APIClient().get("/api/health").status_code == 401  # the detailed one stays authenticated


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/admin/login/", "/api-auth/login/", "/admin/workloads/workload/", "/api/workloads",
                                  "/api/node/logs"])
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
                                          "application/json"])
def test_the_body_limit_covers_every_path(settings, client, path, content_type):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    answer = client.post(path, "x" * 2000, content_type=content_type)
    assert answer.status_code == 413, (path, answer.status_code)
    assert "over the limit of 1000 bytes" in answer.json()["detail"]


@pytest.mark.django_db
def test_only_a_model_upload_may_be_larger(settings, client):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    answer = client.post("/api/ml/models/00000000-0000-0000-0000-000000000001/versions", "x" * 2000,
                         content_type="multipart/form-data; boundary=b")
    assert answer.status_code == 401  # past the body limit, to the API's own checks
