"""Node liveness on the control plane's clock: each beat writes its node's deadlines, the loop
compares them with now, and a loop that was away hands out fresh ones before judging anyone."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.utils import timezone

from nodes.liveness import LIVENESS_LOOP, answer_lag_seconds, node_heartbeat, node_heartbeat_apply, nodes_check_liveness
from nodes.models import ControlLoopState, Node, NodeStatus
from tests.helpers import at_once, make_node

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BEAT, BEATS, OFFLINE = 5.0, 3, 18.0
TICK = 2.0  # the control loop's period (CNET_CONTROL_TICK_SECONDS)
FAILOVER = 3 * TICK  # workloads.control.FAILOVER_AFTER_TICKS


@pytest.fixture(autouse=True)
def timing(settings):
    settings.CNET_HEARTBEAT_SECONDS = BEAT
    settings.CNET_UNHEALTHY_AFTER_BEATS = BEATS
    settings.CNET_OFFLINE_AFTER_SECONDS = OFFLINE
    settings.CNET_MAX_HEARTBEATS_PER_SECOND = 250.0


def check() -> list[str]:
    return nodes_check_liveness(failover_after_seconds=FAILOVER)


def run_loop(clock, seconds: float, *, beating=(), every: float = TICK) -> list[str]:
    """The control loop for ``seconds``: a pass each ``every`` seconds, the ``beating`` nodes
    beating just before it. Returns the node_ids the passes declared offline."""
    gone = []
    for _ in range(round(seconds / every)):
        clock.shift(every)
        for node_id in beating:
            node_heartbeat(node_id=node_id, usage={})
        gone += check()
    return gone


def status(node_id: str) -> str:
    return Node.objects.values_list("status", flat=True).get(node_id=node_id)


def deadlines(node_id: str) -> tuple[datetime, datetime]:
    return Node.objects.values_list("unhealthy_at", "offline_at").get(node_id=node_id)


def after(seconds: float) -> datetime:
    return timezone.now() + timedelta(seconds=seconds)


@pytest.mark.django_db
def test_a_silent_node_turns_unhealthy_after_its_beats_then_offline_while_a_beating_one_stays_ready():
    with time_machine.travel(START, tick=False) as clock:
        make_node("silent")
        make_node("beating")
        assert deadlines("silent") == (START + timedelta(seconds=BEAT * BEATS), START + timedelta(seconds=OFFLINE))
        assert check() == []  # the loop's first pass

        assert run_loop(clock, 14, beating=["beating"]) == [] and status("silent") == NodeStatus.READY
        assert run_loop(clock, 2, beating=["beating"]) == []  # 16 s of silence: three beats missed
        assert (status("silent"), status("beating")) == (NodeStatus.UNHEALTHY, NodeStatus.READY)

        assert run_loop(clock, 2, beating=["beating"]) == []  # 18 s: at its deadline, not past it
        assert run_loop(clock, 2, beating=["beating"]) == ["silent"]
        assert (status("silent"), status("beating")) == (NodeStatus.OFFLINE, NodeStatus.READY)
        assert check() == []  # idempotent: a second pass finds nothing new


@pytest.mark.django_db
def test_an_unhealthy_node_that_beats_again_is_ready_and_an_offline_one_stays_offline():
    with time_machine.travel(START, tick=False) as clock:
        make_node("flaky")
        make_node("gone")
        check()
        run_loop(clock, 16)
        assert status("flaky") == NodeStatus.UNHEALTHY
        assert node_heartbeat(node_id="flaky", usage={}) == NodeStatus.READY
        assert deadlines("flaky")[1] == after(OFFLINE)  # the beat moved its deadline

        assert run_loop(clock, 4, beating=["flaky"]) == ["gone"]
        # An offline node's work was handed back: it must register again, not just beat.
        assert node_heartbeat(node_id="gone", usage={}) == NodeStatus.OFFLINE
        assert check() == [] and status("gone") == NodeStatus.OFFLINE


@pytest.mark.django_db
def test_a_draining_node_that_falls_silent_goes_offline_too():
    with time_machine.travel(START, tick=False) as clock:
        make_node("draining")
        Node.objects.filter(node_id="draining").update(status=NodeStatus.DRAINING)
        check()
        assert run_loop(clock, 20) == ["draining"]


@pytest.mark.django_db
def test_the_deadline_written_with_the_beat_governs_not_the_settings_of_the_pass(settings):
    with time_machine.travel(START, tick=False) as clock:
        make_node("n")
        check()
        settings.CNET_OFFLINE_AFTER_SECONDS = 600.0  # a pass never recomputes a node's deadline
        assert run_loop(clock, 18) == []
        assert run_loop(clock, 2) == ["n"]


# --- a control plane slow to answer judges that much later -----------------------------------

def beat_answered_in(node_ids, seconds: float) -> None:
    for node_id in node_ids:
        node_heartbeat_apply(node_id=node_id, usage={}, rtt_seconds=seconds)


@pytest.mark.django_db
def test_beats_answered_slowly_stretch_every_deadline_by_that_and_a_silent_node_still_goes_offline():
    with time_machine.travel(START, tick=False) as clock:
        beating = [f"b{i}" for i in range(9)]
        for node_id in [*beating, "silent"]:
            make_node(node_id)
        check()
        gone = []
        for _ in range(10):  # 20 s: its 18 s deadline passed, but beats now wait 12 s for their answer
            clock.shift(TICK)
            beat_answered_in(beating, 12.0)
            gone += check()
        assert gone == [] and answer_lag_seconds(now=timezone.now()) == 12.0
        assert status("silent") == NodeStatus.READY  # unhealthy at 15 s, judged at 15 + 12 s
        for _ in range(6):  # 32 s: past 18 + 12
            clock.shift(TICK)
            beat_answered_in(beating, 12.0)
            gone += check()
        assert gone == ["silent"]
        assert {status(node_id) for node_id in beating} == {NodeStatus.READY}


@pytest.mark.django_db
def test_one_slow_link_does_not_hold_back_the_judgement_of_the_fleet():
    with time_machine.travel(START, tick=False) as clock:
        fast = [f"f{i}" for i in range(10)]
        for node_id in [*fast, "slow", "silent"]:
            make_node(node_id)
        check()
        gone = []
        for _ in range(10):  # 20 s
            clock.shift(TICK)
            beat_answered_in(fast, 0.05)
            beat_answered_in(["slow"], 200.0)
            gone += check()
        assert answer_lag_seconds(now=timezone.now()) == 0.05
        assert gone == ["silent"]


@pytest.mark.django_db
def test_answer_times_of_silent_and_offline_nodes_do_not_count():
    with time_machine.travel(START, tick=False) as clock:
        make_node("was-slow")
        beat_answered_in(["was-slow"], 30.0)
        assert answer_lag_seconds(now=timezone.now()) == 30.0
        clock.shift(61)  # its answer time is older than the window
        assert answer_lag_seconds(now=timezone.now()) == 0.0
        make_node("offline")
        beat_answered_in(["offline"], 30.0)
        Node.objects.filter(node_id="offline").update(status=NodeStatus.OFFLINE)
        assert answer_lag_seconds(now=timezone.now()) == 0.0


# --- failover: the control plane was away -----------------------------------------------------

@pytest.mark.django_db
def test_a_control_plane_away_for_a_minute_declares_nobody_offline_and_hands_out_fresh_deadlines():
    with time_machine.travel(START, tick=False) as clock:
        for node_id in ("a", "b", "stopped"):
            make_node(node_id)
        check()
        run_loop(clock, 4, beating=["a", "b", "stopped"])

        clock.shift(60)  # no pass and no beat: the control plane was down, every deadline passed
        assert check() == []
        assert {status(node_id) for node_id in ("a", "b", "stopped")} == {NodeStatus.READY}
        for node_id in ("a", "b", "stopped"):  # its own periods again, counted from now
            assert deadlines(node_id) == (after(BEAT * BEATS), after(OFFLINE))
        state = ControlLoopState.objects.get(name=LIVENESS_LOOP)
        assert state.last_run_at == state.failed_over_at == timezone.now()

        # The nodes that beat again stay; the one that does not goes offline on its new deadline.
        assert run_loop(clock, 18, beating=["a", "b"]) == []
        assert status("stopped") == NodeStatus.UNHEALTHY
        assert run_loop(clock, 2, beating=["a", "b"]) == ["stopped"]
        assert (status("a"), status("b")) == (NodeStatus.READY, NodeStatus.READY)


@pytest.mark.django_db
def test_the_first_pass_ever_is_a_failover():
    """An upgrade restarts the control plane: the first pass has no previous one to trust."""
    with time_machine.travel(START, tick=False) as clock:
        make_node("n")
        clock.shift(30)
        assert check() == [] and status("n") == NodeStatus.READY
        assert deadlines("n")[1] == after(OFFLINE)
        assert run_loop(clock, 20) == ["n"]


@pytest.mark.django_db
def test_a_node_handed_a_long_period_keeps_it_through_a_failover():
    with time_machine.travel(START, tick=False) as clock:
        make_node("slow")
        check()
        clock.shift(TICK)
        node_heartbeat(node_id="slow", usage={})
        Node.objects.filter(node_id="slow").update(  # as a big fleet hands out: a 40 s interval
            unhealthy_at=after(56), offline_at=after(56))
        check()
        clock.shift(30)
        assert check() == []
        assert deadlines("slow") == (after(56), after(56))


@pytest.mark.django_db
def test_a_loop_slower_than_the_failover_threshold_postpones_a_silent_node_once_never_for_ever():
    with time_machine.travel(START, tick=False) as clock:
        make_node("alive")
        make_node("dead")
        check()
        run_loop(clock, 20, beating=["alive", "dead"])

        # Every pass now comes 7 s after the last, past the 6 s threshold, so each is a failover;
        # "dead" gets a fresh deadline from the first of them only, as it never beats again.
        stopped = timezone.now()
        gone = run_loop(clock, 28, beating=["alive"], every=7)
        assert gone == ["dead"] and status("alive") == NodeStatus.READY
        assert timezone.now() - stopped == timedelta(seconds=28)  # 7 (failover) + 18 + the next pass
        assert ControlLoopState.objects.get().failed_over_at == timezone.now()


@pytest.mark.django_db(transaction=True)
def test_racing_passes_after_an_outage_declare_nobody_offline():
    with time_machine.travel(START, tick=False) as clock:
        nodes = [f"n{i}" for i in range(5)]
        for node_id in nodes:
            make_node(node_id)
        check()
        run_loop(clock, 4, beating=nodes)
        clock.shift(60)
        results = at_once(4, check)
        assert results == [[], [], [], []]
        assert set(Node.objects.values_list("status", flat=True)) == {NodeStatus.READY}
        assert set(Node.objects.values_list("offline_at", flat=True)) == {after(OFFLINE)}


@pytest.mark.django_db(transaction=True)
def test_racing_passes_declare_each_silent_node_offline_exactly_once():
    with time_machine.travel(START, tick=False) as clock:
        silent = [f"s{i}" for i in range(6)]
        for node_id in [*silent, "beating"]:
            make_node(node_id)
        check()
        run_loop(clock, 18, beating=["beating"])
        clock.shift(TICK)
        node_heartbeat(node_id="beating", usage={})
        results = at_once(4, check)
        declared = [node_id for gone in results for node_id in gone]
        assert sorted(declared) == silent  # each once, by whichever pass won it
        assert status("beating") == NodeStatus.READY
