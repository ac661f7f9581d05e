import datetime as dt

import pytest

from bot.cron import cron_trigger, next_fire

WED = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("expr", "weekday"),
    [
        ("0 6 * * 1", 0),
        ("0 6 * * 0", 6),
        ("0 6 * * 7", 6),
        ("0 6 * * 5", 4),
        ("0 6 * * mon", 0),
        ("0 6 * * 1-5", 3),
    ],
)
def test_weekdays_follow_cron_not_apscheduler(expr: str, weekday: int) -> None:
    fire = next_fire(expr, "UTC", WED)
    assert fire is not None and fire.weekday() == weekday and fire.hour == 6


def test_timezone_and_errors() -> None:
    fire = next_fire("30 7 * * *", "Europe/London", WED)
    assert (
        fire is not None
        and fire.utcoffset() == dt.timedelta(0)
        and (fire.hour, fire.minute) == (7, 30)
    )
    with pytest.raises(ValueError, match="fields"):
        cron_trigger("every day")
    with pytest.raises(ValueError, match="out of range"):
        cron_trigger("0 6 * * 9")
