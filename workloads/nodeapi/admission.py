"""Admission of joins and registrations: a few at once per web process, and appointments for the rest.

A fleet that starts at once sends every join and registration together. Run all of them and the
beats of the nodes already in wait behind them (their nodes go offline); refuse them with a fixed
Retry-After and they come back together, again and again, until the refusals alone load the
control plane (10,000 simulated nodes: 7 registrations/s). So a refusal hands out an appointment:
Retry-After says when a slot is expected to be free for this request, counting the appointments
already given, at the pace registrations are measured to take here. A fleet then registers about
as fast as the slots allow, each node refused about once.
"""

import math
import threading
import time
from contextlib import contextmanager

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException

# What a registration is taken to hold a slot for before one has been measured (wall seconds).
FIRST_ESTIMATE_SECONDS = 0.05
SMOOTHING = 0.1  # the weight of the latest registration in the running estimate


class RegistrationsBusy(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "the control plane is registering other nodes: try again after Retry-After seconds"

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.wait = retry_after  # DRF's handler sends it as Retry-After


class RegistrationSlots:
    """At most ``CNET_NODE_REGISTRATIONS_IN_FLIGHT`` joins and registrations at once in this web
    process; past that a request is refused at once (``RegistrationsBusy``), before the join's or
    registration's own work, with its appointment. DRF has authenticated a registration by then:
    a refusal still costs its credential lookup (about 1.9 ms of CPU in all, against 2.5 ms for a
    join and 5.3 ms for a registration: bench/fleet_heartbeat_cost.py)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._seconds_each = FIRST_ESTIMATE_SECONDS
        self._next_appointment = 0.0  # on the clock: when the last appointment given falls due

    @contextmanager
    def slot(self):
        slots = settings.CNET_NODE_REGISTRATIONS_IN_FLIGHT
        with self._lock:
            now = self._clock()
            if self._in_flight >= slots:
                self._next_appointment = max(self._next_appointment, now) + self._seconds_each / max(slots, 1)
                raise RegistrationsBusy(retry_after=max(1, math.ceil(self._next_appointment - now)))
            self._in_flight += 1
        started = self._clock()
        try:
            yield
        finally:
            took = self._clock() - started
            with self._lock:
                self._in_flight -= 1
                self._seconds_each += (took - self._seconds_each) * SMOOTHING


registration_slots = RegistrationSlots()
