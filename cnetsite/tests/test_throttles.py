"""Issue 15, point 6 (rate limits): submissions per user and login attempts per address are
throttled at rates set in settings, answered 429 with when to retry; the suite's rate is generous."""

import pytest
from django.core.cache import cache

from tests.helpers import make_node
from workloads.models import Workload
from workloads.tests.api.seeds import SEED_PROCESS

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings):
    """``rates(submissions=..., login=...)``: set the throttle rates (counters start empty)."""
    def set_rates(**scopes: str) -> None:
        cache.clear()
        rest = settings.REST_FRAMEWORK
        settings.REST_FRAMEWORK = {**rest, "DEFAULT_THROTTLE_RATES": {**rest["DEFAULT_THROTTLE_RATES"], **scopes}}

    yield set_rates
    cache.clear()


def test_submissions_past_the_rate_are_refused_429_and_create_nothing(rates, user_api, client_for, django_user_model):
    make_node("local", cpu=64)
    rates(submissions="3/min")
    for _ in range(3):
        assert user_api.post("/api/workloads", SEED_PROCESS, format="json").status_code == 201
    refused = user_api.post("/api/workloads", SEED_PROCESS, format="json")
    assert refused.status_code == 429
    assert "throttled" in refused.json()["detail"] and int(refused["Retry-After"]) > 0
    assert Workload.objects.count() == 3
    # Reads are not counted, and the limit is per user.
    assert user_api.get("/api/workloads").status_code == 200
    bob = client_for(django_user_model.objects.create_user("bob", password="pw"))
    assert bob.post("/api/workloads", SEED_PROCESS, format="json").status_code == 201


@pytest.mark.parametrize("path", ["/admin/login/", "/api-auth/login/"])
def test_login_attempts_past_the_rate_are_refused_per_address_whatever_it_forwards(rates, client, user, path):
    rates(login="2/min")
    for attempt in range(2):
        wrong = client.post(path, {"username": "alice", "password": "guess"}, HTTP_X_FORWARDED_FOR=f"10.0.0.{attempt}")
        assert wrong.status_code == 200  # the form again, saying the password was wrong
    refused = client.post(path, {"username": "alice", "password": "pw"}, HTTP_X_FORWARDED_FOR="10.0.0.9")
    assert refused.status_code == 429 and b"Too many attempts" in refused.content
    assert int(refused["Retry-After"]) > 0 and "_auth_user_id" not in client.session  # not logged in
    assert client.get(path).status_code == 200  # the form itself still shows


def test_the_default_rates_are_settings_and_the_suite_runs_under_generous_ones(settings):
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    assert set(rates) >= {"submissions", "login"}
    assert rates["submissions"] == "100000/min"  # settings_test: the suite submits far more than a person
