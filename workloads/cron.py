"""Cron expressions read by cronsim (the parser healthchecks.io keeps): checked at submit, and the
slots a schedule fires at, computed in its own timezone (so "0 3 * * *" stays 03:00 local across
daylight saving time) and handed out in UTC."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from core.errors import InvalidRequest

# Cron's nicknames, as five fields (cronsim reads only fields).
NICKNAMES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}


def cron_fields(expression: str, *, field: str = "schedule") -> str:
    """The five fields of a cron expression (a nickname spelled out), refused with a reason when
    it does not parse or has a sixth (seconds) field: a run a second is not what schedules are for."""
    text = NICKNAMES.get(expression.strip().lower(), expression.strip())
    if len(text.split()) != 5:
        raise InvalidRequest(f"{expression!r} is not a cron expression: it needs five fields (minute hour "
                             f"day-of-month month day-of-week) or a nickname ({', '.join(NICKNAMES)})", field=field)
    try:
        CronSim(text, datetime.now(UTC))
    except CronSimError as error:
        raise InvalidRequest(f"{expression!r} is not a cron expression: {error}", field=field) from error
    return text


def timezone_get(name: str, *, field: str = "timezone") -> ZoneInfo:
    """An IANA timezone by name (``Europe/Berlin``, ``UTC``), refused when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidRequest(f"{name!r} is not a known timezone (an IANA name such as Europe/Berlin or UTC)",
                             field=field) from error


def cron_slots_after(*, expression: str, timezone: str, after: datetime) -> Iterator[datetime]:
    """The slots of ``expression`` strictly after ``after``, in order, as UTC times."""
    local = after.astimezone(ZoneInfo(timezone))
    for slot in CronSim(cron_fields(expression), local):
        yield slot.astimezone(UTC)


def cron_first_slot_at_or_after(*, expression: str, timezone: str, at: datetime) -> datetime:
    # cronsim's slots are whole seconds, so "strictly after a moment just before" is "at or after".
    return next(cron_slots_after(expression=expression, timezone=timezone, after=at - timedelta(microseconds=1)))
