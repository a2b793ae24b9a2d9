"""Schedules: a workload submitted at every slot of a cron expression.

Each control-loop pass (``schedules_run_due``) looks at the live schedules whose next slot has
come. For one, it works out every slot from the one it had not decided up to now, then claims
them all by moving ``next_run_at`` past now with a conditional UPDATE: of two passes at once only
one moves it (the other's UPDATE matches no row), and the unique (schedule, slot) constraint on
``ScheduleRun`` backs that up. A slot older than the starting deadline is recorded as missed, with
one event for the lot (the control plane was away); a newer one runs by the concurrency policy.
"""

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from core.errors import DomainError, StateConflict
from nodes.resources import Resources

from ..cron import cron_fields, cron_first_slot_at_or_after, cron_slots_after, timezone_get
from ..models import (
    TERMINAL,
    ConcurrencyPolicy,
    Schedule,
    ScheduleEvent,
    ScheduleRun,
    ScheduleRunOutcome,
    Workload,
)
from .lifecycle import workload_stop
from .submit import workload_submission_check, workload_submit

logger = logging.getLogger(__name__)
Outcome = ScheduleRunOutcome
# What a run's environment says of it (every kind's config may carry ``env``).
SCHEDULE_ID_ENV, SCHEDULED_TIME_ENV = "CNET_SCHEDULE_ID", "CNET_SCHEDULED_TIME"
# A run is named <schedule name>-<its slot in UTC>; the schedule's name leaves room for it.
RUN_SUFFIX_FORMAT = "%Y%m%dT%H%MZ"
RUN_SUFFIX_LENGTH = len("-20261201T0300Z")
# Missed slots listed one row each, at most; past that the event counts the rest.
MISSED_LISTED = 1000


def schedule_create(*, owner, name: str, cron: str, timezone_name: str = "UTC",
                    concurrency_policy: str = ConcurrencyPolicy.ALLOW, starting_deadline_seconds: int,
                    requirements: Resources, **submission) -> Schedule:
    """Record a schedule of ``submission`` (a workload's submission body, checked as a submission
    is, less ``count`` and ``depends_on``). Its first slot is the first after now."""
    fields = cron_fields(cron)
    timezone_get(timezone_name)
    workload_submission_check(owner=owner, name=name, requirements=requirements, **submission)
    template = {"name": name, "requirements": requirements.as_dict(), **submission}
    with transaction.atomic():
        schedule = Schedule.objects.create(
            name=name, owner=owner, cron=cron, timezone=timezone_name, concurrency_policy=concurrency_policy,
            starting_deadline_seconds=starting_deadline_seconds, template=template,
            next_run_at=next(cron_slots_after(expression=fields, timezone=timezone_name, after=timezone.now())))
        ScheduleEvent.objects.create(schedule=schedule, reason=f"created: {cron} ({timezone_name}), "
                                                               f"first run at {schedule.next_run_at.isoformat()}")
    return schedule


def schedule_pause(*, schedule: Schedule, reason: str = "paused by user") -> Schedule:
    """No slot runs while paused, and none is caught up on resume."""
    with transaction.atomic():
        if not Schedule.objects.filter(pk=schedule.pk, paused_at__isnull=True).update(paused_at=timezone.now()):
            raise StateConflict("the schedule is already paused", field="paused")
        ScheduleEvent.objects.create(schedule=schedule, reason=reason)
    schedule.refresh_from_db()
    return schedule


def schedule_resume(*, schedule: Schedule, reason: str = "resumed by user") -> Schedule:
    """Run again from the first slot after now; the slots that passed while paused stay unrun."""
    with transaction.atomic():
        now = timezone.now()
        following = next(cron_slots_after(expression=schedule.cron, timezone=schedule.timezone, after=now))
        if not Schedule.objects.filter(pk=schedule.pk, paused_at__isnull=False).update(
                paused_at=None, next_run_at=following):
            raise StateConflict("the schedule is not paused", field="paused")
        ScheduleEvent.objects.create(schedule=schedule, reason=f"{reason}; next run at {following.isoformat()}")
    schedule.refresh_from_db()
    return schedule


def schedule_delete(*, schedule: Schedule) -> None:
    """Delete a schedule and its record of runs; the workloads it started stay, as they are."""
    schedule.delete()


def schedules_run_due(*, limit: int = 100) -> int:
    """One control-loop pass: decide the due slots of up to ``limit`` live schedules (the oldest
    due first). Returns how many workloads it submitted."""
    now = timezone.now()
    due = Schedule.objects.filter(paused_at__isnull=True, next_run_at__lte=now).order_by("next_run_at")[:limit]
    started = 0
    for schedule in due:
        try:
            started += schedule_run_due(schedule=schedule, now=now)
        except Exception:
            logger.exception("schedule %s: its due slots could not be decided; next pass tries again", schedule.pk)
    return started


def schedule_run_due(*, schedule: Schedule, now: datetime) -> int:
    """Decide every slot of ``schedule`` from ``next_run_at`` up to ``now`` in one transaction,
    if this pass wins the claim on them. Returns how many workloads it submitted."""
    horizon = now - timedelta(seconds=schedule.starting_deadline_seconds)
    missed, missed_more, due = _slots_until(schedule=schedule, now=now, horizon=horizon)
    following = next(cron_slots_after(expression=schedule.cron, timezone=schedule.timezone, after=now))
    with transaction.atomic():
        claimed = Schedule.objects.filter(pk=schedule.pk, paused_at__isnull=True,
                                          next_run_at=schedule.next_run_at).update(next_run_at=following)
        if not claimed:
            return 0  # another pass took these slots, or the schedule was paused or changed meanwhile
        if missed:
            _record_missed(schedule=schedule, slots=missed, more=missed_more, now=now)
        started = sum(_run_slot(schedule=schedule, slot=slot) for slot in due)
    schedule.next_run_at = following
    return started


def _slots_until(*, schedule: Schedule, now: datetime, horizon: datetime):
    """The undecided slots up to ``now``: those before ``horizon`` (missed; the first
    ``MISSED_LISTED``, and whether there were more), and the rest (due)."""
    missed: list[datetime] = []
    more = False
    slot = schedule.next_run_at
    slots = cron_slots_after(expression=schedule.cron, timezone=schedule.timezone, after=slot)
    while slot < horizon:
        if len(missed) == MISSED_LISTED:
            more = True  # a long outage of a frequent schedule: skip to the deadline, uncounted
            slot = cron_first_slot_at_or_after(expression=schedule.cron, timezone=schedule.timezone, at=horizon)
            break
        missed.append(slot)
        slot = next(slots)
    due = []
    if slot <= now:
        due.append(slot)
        for later in cron_slots_after(expression=schedule.cron, timezone=schedule.timezone, after=slot):
            if later > now:
                break
            due.append(later)
    return missed, more, due


def _record_missed(*, schedule: Schedule, slots: list[datetime], more: bool, now: datetime) -> None:
    deadline = schedule.starting_deadline_seconds
    why = f"not started within its starting deadline ({deadline} s): the control loop was not running"
    ScheduleRun.objects.bulk_create([ScheduleRun(schedule=schedule, slot=slot, outcome=Outcome.MISSED, reason=why)
                                     for slot in slots])
    count = f"more than {len(slots)}" if more else str(len(slots))
    ScheduleEvent.objects.create(
        schedule=schedule,
        reason=f"missed {count} run(s) from {slots[0].isoformat()} to {slots[-1].isoformat()}"
               f"{' and on' if more else ''}: {why} until {now.isoformat()}",
        details={"missed": len(slots), "more": more, "first": slots[0].isoformat(), "last": slots[-1].isoformat()})
    logger.warning("schedule %s: missed %s run(s) from %s", schedule.pk, count, slots[0].isoformat())


def _run_slot(*, schedule: Schedule, slot: datetime) -> int:
    """One due slot by the schedule's concurrency policy; 1 when it submitted a workload."""
    earlier = Workload.objects.filter(schedule_runs__schedule=schedule).exclude(status__in=TERMINAL)
    policy = schedule.concurrency_policy
    if policy == ConcurrencyPolicy.FORBID and earlier.exists():
        names = ", ".join(earlier.values_list("name", flat=True)[:3])
        ScheduleRun.objects.create(schedule=schedule, slot=slot, outcome=Outcome.SKIPPED,
                                   reason=f"skipped: {names} has not ended (concurrency policy forbid)")
        return 0
    if policy == ConcurrencyPolicy.REPLACE:
        for workload in earlier.select_related("node"):
            workload_stop(workload=workload, reason=f"replaced by the run of {slot.isoformat()} ({schedule.name})")
            ScheduleEvent.objects.create(schedule=schedule, reason=f"stopped {workload.name}: replaced by the "
                                                                   f"run of {slot.isoformat()}")
    try:
        with transaction.atomic():
            workload = workload_submit(owner=schedule.owner, **_run_fields(schedule=schedule, slot=slot))
    except DomainError as error:
        ScheduleRun.objects.create(schedule=schedule, slot=slot, outcome=Outcome.REFUSED, reason=str(error))
        ScheduleEvent.objects.create(schedule=schedule, reason=f"the run of {slot.isoformat()} was refused: {error}")
        return 0
    ScheduleRun.objects.create(schedule=schedule, slot=slot, outcome=Outcome.STARTED, workload=workload,
                               reason=f"submitted {workload.name}: {workload.status}")
    return 1


def _run_fields(*, schedule: Schedule, slot: datetime) -> dict:
    """The submission of one slot's run: the template, named for the slot, told which it is."""
    template = dict(schedule.template)
    config = template["config"]
    env = {**config.get("env", {}), SCHEDULE_ID_ENV: str(schedule.pk), SCHEDULED_TIME_ENV: slot.isoformat()}
    return template | {
        "name": f"{schedule.name}-{slot:{RUN_SUFFIX_FORMAT}}",
        "requirements": Resources(**template["requirements"]),
        "config": {**config, "env": env},
    }
