"""Joins and registrations past the slots get appointments, not a fixed Retry-After."""

import pytest

from workloads.nodeapi.admission import FIRST_ESTIMATE_SECONDS, RegistrationsBusy, RegistrationSlots


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(slots: RegistrationSlots) -> int:
    with pytest.raises(RegistrationsBusy) as refused:
        with slots.slot():
            pass
    return refused.value.wait


def test_a_refusal_hands_out_the_next_appointment_so_a_fleet_comes_back_spread_out(settings):
    settings.CNET_NODE_REGISTRATIONS_IN_FLIGHT = 1
    clock = Clock()
    slots = RegistrationSlots(clock=clock)
    with slots.slot():  # the one slot is taken
        appointments = [refusal(slots) for _ in range(200)]
    # Spaced by the time a registration is taken to hold a slot: 200 × 0.05 s = the 10th second.
    assert appointments[0] == 1
    assert appointments == sorted(appointments)
    assert appointments[-1] == round(200 * FIRST_ESTIMATE_SECONDS)

    # Once those appointments have passed, the next refusal is told to come back soon again.
    clock.now += 60
    with slots.slot():
        assert refusal(slots) == 1


def test_appointments_follow_how_long_registrations_take_here(settings):
    settings.CNET_NODE_REGISTRATIONS_IN_FLIGHT = 2
    clock = Clock()
    slots = RegistrationSlots(clock=clock)
    for _ in range(100):  # registrations that hold their slot a second each
        with slots.slot():
            clock.now += 1.0
    with slots.slot(), slots.slot():
        appointments = [refusal(slots) for _ in range(20)]
    # Two slots, a second each: two a second, so the 20th refused comes back in about 10 s.
    assert 9 <= appointments[-1] <= 10
