"""Node liveness on the control plane's clock: silent nodes turn unhealthy, then offline."""

from datetime import UTC, datetime

import pytest
import time_machine

from nodes.models import Node, NodeStatus
from nodes.services import node_heartbeat, nodes_check_liveness
from tests.helpers import make_node

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BEAT, BEATS, OFFLINE = 5.0, 3, 18.0


def check() -> list[str]:
    return nodes_check_liveness(heartbeat_seconds=BEAT, unhealthy_after_beats=BEATS, offline_after_seconds=OFFLINE)


def status(node_id: str) -> str:
    return Node.objects.values_list("status", flat=True).get(node_id=node_id)


@pytest.mark.django_db
def test_a_silent_node_turns_unhealthy_after_its_beats_then_offline_while_a_beating_one_stays_ready():
    with time_machine.travel(START, tick=False) as clock:
        make_node("silent")
        make_node("beating")
        clock.shift(BEAT * BEATS - 1)
        node_heartbeat(node_id="beating", usage={})
        assert check() == [] and status("silent") == NodeStatus.READY

        clock.shift(2)  # 16 s of silence: three beats missed
        node_heartbeat(node_id="beating", usage={})
        assert check() == []
        assert (status("silent"), status("beating")) == (NodeStatus.UNHEALTHY, NodeStatus.READY)

        clock.shift(OFFLINE - BEAT * BEATS)  # 19 s of silence
        node_heartbeat(node_id="beating", usage={})
        assert check() == ["silent"]
        assert (status("silent"), status("beating")) == (NodeStatus.OFFLINE, NodeStatus.READY)
        assert check() == []  # idempotent: a second pass finds nothing new


@pytest.mark.django_db
def test_an_unhealthy_node_that_beats_again_is_ready_and_an_offline_one_stays_offline():
    with time_machine.travel(START, tick=False) as clock:
        make_node("flaky")
        make_node("gone")
        clock.shift(BEAT * BEATS + 1)
        check()
        assert status("flaky") == NodeStatus.UNHEALTHY
        assert node_heartbeat(node_id="flaky", usage={}) == NodeStatus.READY

        clock.shift(OFFLINE)
        node_heartbeat(node_id="flaky", usage={})
        assert check() == ["gone"]
        # An offline node's work was handed back: it must register again, not just beat.
        assert node_heartbeat(node_id="gone", usage={}) == NodeStatus.OFFLINE


@pytest.mark.django_db
def test_a_draining_node_that_falls_silent_goes_offline_too():
    with time_machine.travel(START, tick=False) as clock:
        make_node("draining")
        Node.objects.filter(node_id="draining").update(status=NodeStatus.DRAINING)
        clock.shift(OFFLINE + 1)
        assert check() == ["draining"]
