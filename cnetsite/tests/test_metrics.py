"""/metrics: scraped as Prometheus would, parsed with prometheus_client's own parsers."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from cnetsite.metrics.collector import DatabaseCollector
from nodes.liveness import node_heartbeat
from nodes.models import Node, NodeStatus
from nodes.services import node_set_schedulable
from tests.helpers import GiB, make_node, submit_process
from workloads.models import Workload, WorkloadStatus
from workloads.services import workload_transition

S = WorkloadStatus
ROOT = Path(settings.BASE_DIR)


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def value(families: dict, family: str, sample: str | None = None, **labels) -> float | None:
    """The one sample named ``sample`` (default: the family's name) whose labels include ``labels``."""
    found = [
        s.value for s in families[family].samples
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, f"{family}{labels}: {len(found)} samples"
    return found[0] if found else None


# --- access -------------------------------------------------------------------------------

@pytest.mark.django_db
def test_anonymous_is_refused(client):
    assert client.get("/metrics").status_code in (401, 403)


@pytest.mark.django_db
def test_a_non_staff_token_is_refused(user_api):
    assert user_api.get("/metrics").status_code == 403


@pytest.mark.django_db
def test_staff_token_bearer_token_and_staff_session_are_allowed(api, admin_user):
    assert api.get("/metrics").status_code == 200
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_user.auth_token.key}")
    assert bearer.get("/metrics").status_code == 200
    session = Client()
    session.force_login(get_user_model().objects.create_user("ops", password="pw", is_staff=True))
    assert session.get("/metrics").status_code == 200


@pytest.mark.django_db
def test_the_operator_can_make_it_public(client, settings):
    settings.CNET_METRICS_PUBLIC = True
    families = scrape(client)
    assert "cnet_nodes" in families


# --- gauges from the database --------------------------------------------------------------

@pytest.mark.django_db
def test_nodes_by_status_capacity_allocated_usage_and_heartbeat_age(api):
    make_node("local", cpu=4, memory=8 * GiB, storage=100 * GiB)
    make_node("gpu-box", cpu=2, memory=4 * GiB, gpu=1)
    make_node("silent", cpu=1, memory=GiB)
    node_set_schedulable(node_id="gpu-box", schedulable=False)
    Node.objects.filter(node_id="silent").update(
        status=NodeStatus.UNHEALTHY, last_heartbeat=timezone.now() - timedelta(seconds=120)
    )
    node_heartbeat(node_id="local", usage={"cpu_percent": 50.0, "cpu_count": 4,
                                           "memory_used_bytes": 3 * GiB, "disk_used_bytes": 7 * GiB})
    submit_process(cpu=1.5, memory=2 * GiB)

    m = scrape(api)

    assert value(m, "cnet_nodes", status="ready") == 1
    assert value(m, "cnet_nodes", status="draining") == 1
    assert value(m, "cnet_nodes", status="unhealthy") == 1
    assert value(m, "cnet_nodes", status="offline") == 0
    assert value(m, "cnet_node_status", node="silent", status="unhealthy") == 1
    assert value(m, "cnet_node_capacity", node="local", resource="cpu", unit="core") == 4.0
    assert value(m, "cnet_node_capacity", node="local", resource="memory", unit="byte") == 8 * GiB
    assert value(m, "cnet_node_capacity", node="local", resource="storage", unit="byte") == 100 * GiB
    assert value(m, "cnet_node_capacity", node="gpu-box", resource="gpu", unit="device") == 1
    assert value(m, "cnet_node_allocated", node="local", resource="cpu", unit="core") == 1.5
    assert value(m, "cnet_node_allocated", node="local", resource="memory", unit="byte") == 2 * GiB
    assert value(m, "cnet_node_allocated", node="gpu-box", resource="cpu", unit="core") == 0
    assert value(m, "cnet_node_usage", node="local", resource="cpu", unit="core") == 2.0
    assert value(m, "cnet_node_usage", node="local", resource="memory", unit="byte") == 3 * GiB
    assert value(m, "cnet_node_usage", node="local", resource="storage", unit="byte") == 7 * GiB
    assert value(m, "cnet_node_usage", node="gpu-box", resource="cpu", unit="core") is None  # never sampled
    assert 0 <= value(m, "cnet_node_heartbeat_age_seconds", node="local") < 60
    assert 120 <= value(m, "cnet_node_heartbeat_age_seconds", node="silent") < 180
    last = Node.objects.get(node_id="local").last_heartbeat.timestamp()
    assert value(m, "cnet_node_last_heartbeat_timestamp_seconds", node="local") == pytest.approx(last)


@pytest.mark.django_db
def test_workloads_by_status_and_type_and_the_pending_queue(api):
    make_node("local", cpu=2, memory=4 * GiB)
    running = submit_process(cpu=1)
    assert workload_transition(workload_id=running.pk, to=S.RUNNING)
    submit_process(cpu=1)                      # scheduled
    waiting = submit_process(cpu=2)            # fits the node's capacity, not its free share: pending
    submit_process(cpu=2)
    assert waiting.status == S.PENDING
    Workload.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(seconds=90))

    m = scrape(api)

    assert value(m, "cnet_workloads", status="running", type="process") == 1
    assert value(m, "cnet_workloads", status="scheduled", type="process") == 1
    assert value(m, "cnet_workloads", status="pending", type="process") == 2
    assert value(m, "cnet_workloads", status="pending", type="container") == 0
    assert value(m, "cnet_workloads", status="succeeded", type="mlmodel") == 0
    assert value(m, "cnet_workloads_pending") == 2
    assert 90 <= value(m, "cnet_workloads_pending_oldest_age_seconds") < 150


@pytest.mark.django_db
def test_an_empty_queue_has_age_zero(api):
    m = scrape(api)
    assert value(m, "cnet_workloads_pending") == 0
    assert value(m, "cnet_workloads_pending_oldest_age_seconds") == 0


@pytest.mark.django_db
def test_dispatch_latency_counts_first_starts_within_the_window(api, settings):
    settings.CNET_METRICS_DISPATCH_WINDOW_SECONDS = 600
    make_node("local", cpu=8, memory=16 * GiB)
    now = timezone.now()
    quick, slow, old, restarted = (submit_process() for _ in range(4))
    for workload, waited in ((quick, 3), (slow, 45), (old, 1), (restarted, 1)):
        Workload.objects.filter(pk=workload.pk).update(created_at=now - timedelta(seconds=waited))
        assert workload_transition(workload_id=workload.pk, to=S.RUNNING)
    # Started an hour ago: outside the window. Restarted: its created_at is the first submission.
    Workload.objects.filter(pk=old.pk).update(
        created_at=now - timedelta(seconds=3601), started_at=now - timedelta(seconds=3600)
    )
    Workload.objects.filter(pk=restarted.pk).update(restart_count=1)

    m = scrape(api)
    name = "cnet_dispatch_latency_seconds"

    assert m[name].type == "histogram"  # a gauge histogram, as the text format spells it
    bucket = name + "_bucket"
    assert value(m, name, bucket, le="2.0") == 0
    assert value(m, name, bucket, le="5.0") == 1
    assert value(m, name, bucket, le="30.0") == 1
    assert value(m, name, bucket, le="60.0") == 2
    assert value(m, name, bucket, le="+Inf") == 2
    assert value(m, name + "_gcount") == 2
    assert value(m, name + "_gsum") == pytest.approx(48, abs=1.5)


@pytest.mark.django_db
def test_openmetrics_is_served_when_asked_for(api):
    response = api.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    text = response.content.decode()
    assert text.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(text)}
    assert families["cnet_dispatch_latency_seconds"].type == "gaugehistogram"
    assert families["cnet_placement_duration_seconds"].type == "histogram"


@pytest.mark.django_db
def test_the_collector_runs_a_fixed_number_of_queries(django_assert_num_queries):
    for i in range(3):
        make_node(f"n{i}")
    with django_assert_num_queries(4):
        few = list(DatabaseCollector().collect())
    for i in range(3, 30):
        make_node(f"n{i}", parent="n0")
    with django_assert_num_queries(4):
        many = list(DatabaseCollector().collect())
    capacity = {f.name: f for f in many}["cnet_node_capacity"]
    assert len(capacity.samples) == 30 * 4 and len(few) == len(many)


# --- in-process histograms -----------------------------------------------------------------

@pytest.mark.django_db
def test_placement_latency_is_observed_per_strategy_and_outcome(api):
    make_node("local", cpu=1, memory=GiB)
    count = "cnet_placement_duration_seconds_count"

    def counts():
        m = scrape(api)
        return tuple(
            value(m, "cnet_placement_duration_seconds", count, strategy=strategy, outcome=outcome) or 0
            for strategy, outcome in (("default", "placed"), ("default", "unplaced"), ("best_fit", "placed"))
        )

    before = counts()
    submit_process(cpu=1, memory=GiB)
    submit_process(cpu=1, memory=GiB)  # the node is full: stays pending
    after = counts()
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, 1, 0)


@pytest.mark.django_db
def test_heartbeats_are_counted_recorded_or_refused(api):
    node = make_node("beating")

    def counts():
        m = scrape(api)
        return tuple(value(m, "cnet_node_heartbeats", "cnet_node_heartbeats_total", outcome=outcome) or 0
                     for outcome in ("recorded", "refused"))

    before = counts()
    node_heartbeat(node_id="beating", usage={}, epoch=node.agent_epoch)
    node_heartbeat(node_id="beating", usage={}, epoch=node.agent_epoch)
    node_heartbeat(node_id="beating", usage={}, epoch=node.agent_epoch + 1)  # a superseded agent
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)


@pytest.mark.django_db
def test_api_request_latency_is_labelled_by_route_pattern_method_and_status(api):
    def health_count():
        m = scrape(api)
        found = [
            s.value for s in m["cnet_http_request_duration_seconds"].samples
            if s.name == "cnet_http_request_duration_seconds_count" and "health" in s.labels["route"]
            and s.labels["method"] == "GET" and s.labels["status"] == "200"
        ]
        return found[0] if found else 0

    before = health_count()
    assert api.get("/api/health").status_code == 200
    assert api.get("/api/health/").status_code == 200
    assert health_count() - before == 2
    api.get("/no/such/page")
    m = scrape(api)
    assert any(s.labels.get("route") == "<unmatched>" and s.labels.get("status") == "404"
               for s in m["cnet_http_request_duration_seconds"].samples)


def test_multiprocess_mode_sums_histograms_over_processes(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR, what two processes observed shows in a third's scrape."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    observe = ("from core.instruments import observe_placement; "
               "observe_placement(seconds=0.003, strategy='default', placed=True)")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", observe], cwd=ROOT, env=env, check=True, timeout=60)
    expose = ("from prometheus_client import generate_latest; from cnetsite.metrics import instruments_source; "
              "print(generate_latest(instruments_source()).decode())")
    out = subprocess.run([sys.executable, "-c", expose], cwd=ROOT, env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    m = {family.name: family for family in text_string_to_metric_families(out)}
    name = "cnet_placement_duration_seconds"
    assert value(m, name, name + "_count", strategy="default", outcome="placed") == 2
    assert value(m, name, name + "_sum", strategy="default", outcome="placed") == pytest.approx(0.006)
    assert value(m, name, name + "_bucket", strategy="default", outcome="placed", le="0.0025") == 0
    assert value(m, name, name + "_bucket", strategy="default", outcome="placed", le="0.005") == 2
