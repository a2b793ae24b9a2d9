"""Heartbeats that scale: the interval grows with the fleet, bounded by the rate; each beat writes
its node's deadlines from the interval it hands out, in one statement."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from nodes.heartbeats import (
    GRACE_PER_INTERVAL,
    heartbeat_interval,
    heartbeat_timing_for,
    heartbeat_timing_now,
    live_node_count,
    live_node_count_forget,
)
from nodes.liveness import node_heartbeat, node_heartbeat_apply, nodes_check_liveness
from nodes.models import Node, NodeStatus
from nodes.resources import Resources
from nodes.services import node_register
from tests.helpers import make_node

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def writes(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].lstrip().split(" ", 1)[0].upper() in ("UPDATE", "INSERT", "DELETE")]


def counts(queries) -> list[str]:
    return [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]


def timing(live_nodes: int, *, rate: float = 250.0):
    return heartbeat_timing_for(live_nodes=live_nodes, base_seconds=5.0, max_per_second=rate,
                                unhealthy_after_beats=3, offline_after_seconds=18.0)


def bulk_nodes(count: int, *, status: str = NodeStatus.READY, prefix: str = "bulk") -> None:
    Node.objects.bulk_create(Node(node_id=f"{prefix}-{i}", status=status) for i in range(count))


# --- the arithmetic ---------------------------------------------------------------------------

@pytest.mark.parametrize(("nodes", "interval", "offline"), [
    (0, 5.0, 18.0), (1_000, 5.0, 18.0), (1_250, 5.0, 18.0),  # 250/s at 5 s: the base holds
    (2_500, 10.0, 23.0),                                      # the small fleet's 13 s grace
    (10_000, 40.0, 53.0),                                     # 0.3 of 40 s is 12 s: still 13 s
    (20_000, 80.0, 104.0), (50_000, 200.0, 260.0),           # 0.3 of the interval
])
def test_the_interval_is_the_base_until_the_fleet_would_pass_the_rate_then_grows_with_it(nodes, interval, offline):
    handed = timing(nodes)
    assert (handed.interval_seconds, handed.offline_after_seconds) == pytest.approx((interval, offline))


def test_the_fleet_never_beats_faster_than_the_rate_and_nobody_goes_offline_before_its_next_beat_is_due():
    for nodes in range(0, 100_001, 250):
        handed = timing(nodes)
        assert nodes / handed.interval_seconds <= 250.0 + 1e-9
        assert handed.offline_after_seconds >= max(18.0, handed.interval_seconds * (1 + GRACE_PER_INTERVAL),
                                                   handed.interval_seconds + 13.0) - 1e-9
        assert handed.unhealthy_after_seconds <= handed.offline_after_seconds


def test_the_defaults_meet_the_detection_aims_and_keep_the_agents_fencing_margin():
    """10,000 nodes: a stopped one declared within 60 s; 1,000: within 20 s (its deadline plus one
    control tick); a late beat has room; the agent, which fences one beat before
    CNET_OFFLINE_AFTER_SECONDS, still fences before any deadline handed out."""
    tick = django_settings.CNET_CONTROL_TICK_SECONDS
    for nodes, aim in ((10_000, 60.0), (1_000, 20.0)):
        handed = heartbeat_timing_for(
            live_nodes=nodes, base_seconds=django_settings.CNET_HEARTBEAT_SECONDS,
            max_per_second=django_settings.CNET_MAX_HEARTBEATS_PER_SECOND,
            unhealthy_after_beats=django_settings.CNET_UNHEALTHY_AFTER_BEATS,
            offline_after_seconds=django_settings.CNET_OFFLINE_AFTER_SECONDS,
        )
        assert handed.offline_after_seconds + tick <= aim, (nodes, handed)
        assert handed.offline_after_seconds - handed.interval_seconds >= 10.0, (nodes, handed)  # a late beat's room
        assert handed.offline_after_seconds >= django_settings.CNET_OFFLINE_AFTER_SECONDS
        assert nodes / handed.interval_seconds <= django_settings.CNET_MAX_HEARTBEATS_PER_SECOND


def test_the_interval_is_never_under_the_base():
    assert heartbeat_interval(live_nodes=10, base_seconds=5.0, max_per_second=1.0) == 10.0
    assert heartbeat_interval(live_nodes=10, base_seconds=5.0, max_per_second=1000.0) == 5.0


# --- on the database --------------------------------------------------------------------------

@pytest.fixture
def slow_rate(settings):
    """100 beats/s, so a few thousand nodes stretch the interval (3,000 nodes: every 30 s)."""
    settings.CNET_HEARTBEAT_SECONDS = 5.0
    settings.CNET_UNHEALTHY_AFTER_BEATS = 3
    settings.CNET_OFFLINE_AFTER_SECONDS = 18.0
    settings.CNET_MAX_HEARTBEATS_PER_SECOND = 100.0
    return settings


@pytest.mark.django_db
def test_a_beat_in_a_large_fleet_is_handed_a_longer_interval_and_its_deadlines_come_from_it(slow_rate):
    make_node("n")
    bulk_nodes(2_999)
    bulk_nodes(5_000, status=NodeStatus.OFFLINE, prefix="gone")  # offline nodes do not beat: not counted
    live_node_count_forget()
    with time_machine.travel(START, tick=False):
        beat = node_heartbeat_apply(node_id="n", usage={})
    assert (beat.timing.interval_seconds, beat.timing.offline_after_seconds) == (30.0, 43.0)  # 30 + 13 s
    assert beat.timing.unhealthy_after_seconds == 43.0  # 3 beats would be 90 s: never after offline
    node = Node.objects.get(node_id="n")
    assert (node.last_heartbeat, node.unhealthy_at, node.offline_at) == (
        START, START + timedelta(seconds=43), START + timedelta(seconds=43))


@pytest.mark.django_db
def test_a_node_handed_a_long_interval_is_not_declared_offline_early_when_the_fleet_shrinks(slow_rate):
    with time_machine.travel(START, tick=False) as clock:
        make_node("big-fleet")
        make_node("small-fleet")
        bulk_nodes(2_998)
        nodes_check_liveness(failover_after_seconds=6.0)
        live_node_count_forget()
        assert node_heartbeat_apply(node_id="big-fleet", usage={}).timing.interval_seconds == 30.0

        Node.objects.filter(node_id__startswith="bulk-").delete()  # the fleet shrinks to two
        live_node_count_forget()
        assert node_heartbeat_apply(node_id="small-fleet", usage={}).timing.interval_seconds == 5.0
        assert Node.objects.get(node_id="small-fleet").offline_at == START + timedelta(seconds=18)

        for _ in range(21):  # 42 s of passes every 2 s; small-fleet beats, big-fleet keeps silent
            clock.shift(2)
            node_heartbeat(node_id="small-fleet", usage={})
            assert nodes_check_liveness(failover_after_seconds=6.0) == []
        assert Node.objects.get(node_id="big-fleet").status == NodeStatus.READY  # its deadline: 42 s
        clock.shift(2)
        assert nodes_check_liveness(failover_after_seconds=6.0) == ["big-fleet"]


@pytest.mark.django_db
def test_the_fleet_is_counted_once_per_few_seconds_not_per_beat():
    make_node("a")
    make_node("b")
    live_node_count_forget()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            node_heartbeat(node_id="a", usage={})
            node_heartbeat(node_id="b", usage={})
    assert len(counts(queries)) == 1, counts(queries)
    assert live_node_count() == 2


@pytest.mark.django_db
def test_a_database_heartbeat_is_one_statement_and_brings_an_unhealthy_node_back():
    make_node("n")
    Node.objects.filter(node_id="n").update(status=NodeStatus.UNHEALTHY)
    live_node_count()  # the count is taken at most every few seconds, not on this beat
    with time_machine.travel(START, tick=False), CaptureQueriesContext(connection) as queries:
        assert node_heartbeat(node_id="n", usage={"cpu_percent": 3.0}) == NodeStatus.READY
    # the write returns the status it leaves: no read after it
    assert len(writes(queries)) == 1 and len(queries) == 1, [q["sql"][:90] for q in queries]
    node = Node.objects.get(node_id="n")
    assert (node.status, node.usage, node.last_heartbeat) == (NodeStatus.READY, {"cpu_percent": 3.0}, START)
    # the defaults: unhealthy after 2 beats of 5 s, offline after 15 s
    assert (node.unhealthy_at, node.offline_at) == (START + timedelta(seconds=10), START + timedelta(seconds=15))


@pytest.mark.django_db
def test_a_stale_epoch_or_an_unknown_node_writes_nothing():
    node = make_node("n")
    with CaptureQueriesContext(connection) as queries:
        assert node_heartbeat(node_id="n", usage={"x": 1}, epoch=node.agent_epoch + 1) is None
        assert node_heartbeat(node_id="ghost", usage={}) is None
    assert all("UPDATE" in sql for sql in writes(queries))  # tried, matched nothing
    assert Node.objects.get(node_id="n").usage != {"x": 1}


@pytest.mark.django_db
def test_registering_writes_the_deadlines_of_the_timing_it_hands_out(slow_rate):
    bulk_nodes(2_999)  # and the new node itself
    live_node_count_forget()
    with time_machine.travel(START, tick=False):
        node = node_register(node_id="new", capacity=Resources(cpu=1000))
    handed = heartbeat_timing_now()  # the count is cached: what the registration was handed
    assert handed.interval_seconds == 30.0
    assert node.last_heartbeat == START and node.status == NodeStatus.READY
    assert node.offline_at == START + timedelta(seconds=handed.offline_after_seconds)


@pytest.mark.django_db
def test_a_failover_refreshes_the_whole_fleet_in_one_update():
    with time_machine.travel(START, tick=False) as clock:
        bulk_nodes(200)
        Node.objects.update(last_heartbeat=timezone.now(), offline_at=timezone.now() + timedelta(seconds=18),
                            unhealthy_at=timezone.now() + timedelta(seconds=15))
        clock.shift(60)
        with CaptureQueriesContext(connection) as queries:
            assert nodes_check_liveness(failover_after_seconds=6.0) == []
        node_writes = [sql for sql in writes(queries) if Node._meta.db_table in sql.split("SET")[0]]
        # the refresh, then the normal checks (which find nobody due)
        assert len(node_writes) == 2, node_writes
        assert set(Node.objects.values_list("offline_at", flat=True)) == {timezone.now() + timedelta(seconds=18)}


@pytest.mark.django_db
def test_nodes_declared_offline_but_heard_from_lately_still_count_so_an_overload_does_not_shrink_the_interval(
        slow_rate):
    """An overloaded control plane lets beats run late and nodes go offline; their agents register
    again and beat on. Were they not counted, the interval handed out would shrink as the load grew."""
    make_node("n")
    bulk_nodes(1_999)
    with time_machine.travel(START, tick=False):
        Node.objects.bulk_create(Node(node_id=f"late-{i}", status=NodeStatus.OFFLINE,
                                      last_heartbeat=START - timedelta(seconds=60)) for i in range(1_000))
        live_node_count_forget()
        assert node_heartbeat_apply(node_id="n", usage={}).timing.interval_seconds == 30.0
