"""Standard 5-field cron expressions as APScheduler triggers.

APScheduler 3 numbers weekdays from Monday (0 = mon) while cron numbers them from Sunday
(0 and 7 = sun), and ``CronTrigger.from_crontab`` passes the numbers through, so "0 6 * * 1"
would fire on Tuesdays. Weekday numbers are turned into names here first.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

from apscheduler.triggers.cron import CronTrigger

DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _weekday_names(field: str) -> str:
    def name(match: re.Match[str]) -> str:
        number = int(match.group(0))
        if number > 7:
            raise ValueError(f"day of week {number} is out of range 0-7")
        return DAYS[number]

    parts = []
    for part in field.split(","):
        base, slash, step = part.partition("/")
        if base in ("*", "?"):
            parts.append(part)
            continue
        parts.append(re.sub(r"\d+", name, base) + slash + step)
    return ",".join(parts)


def cron_trigger(expression: str, timezone: str = "UTC") -> CronTrigger:
    """A trigger for a standard cron line ``minute hour day month weekday``."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month,
        day_of_week=_weekday_names(weekday), timezone=zoneinfo.ZoneInfo(timezone),
    )  # fmt: skip


def next_fire(expression: str, timezone: str, now: dt.datetime | None = None) -> dt.datetime | None:
    zone = zoneinfo.ZoneInfo(timezone)
    fire: dt.datetime | None = cron_trigger(expression, timezone).get_next_fire_time(
        None, now or dt.datetime.now(zone)
    )
    return fire
