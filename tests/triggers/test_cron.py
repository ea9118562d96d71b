"""Cron maths: crontab's conventions on top of APScheduler 3's trigger."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.runtime.triggers import (
    ScheduleError,
    cron_trigger,
    fire_run_id,
    latest_fire,
    next_fire,
)

from .conftest import at


def fires(cron: str, start: float, count: int, timezone: str | None = None) -> list[str]:
    trigger = cron_trigger(cron, timezone)
    out, moment = [], start
    for _ in range(count):
        found = next_fire(trigger, moment)
        assert found is not None
        out.append(datetime.fromtimestamp(found, UTC).strftime("%a %d %H:%M"))
        moment = found
    return out


@pytest.mark.parametrize("sunday", ["0", "7", "sun", "SUN"])
def test_sunday_is_0_and_7_as_in_crontab(sunday: str) -> None:
    # 2026-01-01 is a Thursday; APScheduler 3 alone would read 0 as Monday.
    assert fires(f"0 9 * * {sunday}", at(2026, 1, 1), 2) == ["Sun 04 09:00", "Sun 11 09:00"]


def test_weekday_ranges_steps_and_lists() -> None:
    assert fires("0 9 * * 1-5", at(2026, 1, 2, 10), 3) == [
        "Mon 05 09:00",
        "Tue 06 09:00",
        "Wed 07 09:00",
    ]
    assert fires("0 9 * * 0-2", at(2026, 1, 3, 10), 3) == [
        "Sun 04 09:00",
        "Mon 05 09:00",
        "Tue 06 09:00",
    ]
    assert fires("0 9 * * */3", at(2026, 1, 1), 3) == [
        "Sat 03 09:00",
        "Sun 04 09:00",
        "Wed 07 09:00",
    ]
    assert fires("0 9 * * 5-7", at(2026, 1, 1), 3) == [
        "Fri 02 09:00",
        "Sat 03 09:00",
        "Sun 04 09:00",
    ]


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # Friday or the 13th (crontab); APScheduler alone would ask for Friday the 13th.
    assert fires("0 0 13 * 5", at(2026, 1, 1), 4) == [
        "Fri 02 00:00",
        "Fri 09 00:00",
        "Tue 13 00:00",
        "Fri 16 00:00",
    ]
    # A "*/2" day of month is unrestricted in crontab's sense: both must match.
    assert fires("0 0 */2 * 1", at(2026, 1, 1), 2) == ["Mon 05 00:00", "Mon 19 00:00"]


def test_minutes_hours_and_month_names() -> None:
    assert fires("*/20 9-10 * jan *", at(2026, 1, 1), 4) == [
        "Thu 01 09:00",
        "Thu 01 09:20",
        "Thu 01 09:40",
        "Thu 01 10:00",
    ]


def test_time_zones_follow_daylight_saving() -> None:
    winter = fires("0 9 * * *", at(2026, 1, 1), 1, "America/New_York")
    summer = fires("0 9 * * *", at(2026, 7, 1), 1, "America/New_York")
    assert winter == ["Thu 01 14:00"] and summer == ["Wed 01 13:00"]


def test_an_unknown_time_zone_is_an_error_naming_it() -> None:
    with pytest.raises(ScheduleError, match="Mars/Olympus"):
        cron_trigger("* * * * *", "Mars/Olympus")


def test_latest_fire_after_a_long_downtime() -> None:
    every_minute = cron_trigger("* * * * *")
    latest = latest_fire(every_minute, at(2025, 1, 1), at(2026, 3, 1, 12, 30, 45))
    assert latest == at(2026, 3, 1, 12, 30)
    yearly = cron_trigger("0 3 1 1 *")
    assert latest_fire(yearly, at(2020, 6, 1), at(2026, 6, 1)) == at(2026, 1, 1, 3)
    assert latest_fire(yearly, at(2026, 1, 1, 3), at(2026, 6, 1)) is None
    # The bounds: after is excluded, until included.
    five = cron_trigger("*/5 * * * *")
    assert latest_fire(five, at(2026, 1, 1, 0, 5), at(2026, 1, 1, 0, 10)) == at(2026, 1, 1, 0, 10)
    assert latest_fire(five, at(2026, 1, 1, 0, 5), at(2026, 1, 1, 0, 9, 59)) is None


def test_fire_run_ids_are_deterministic_distinct_and_time_ordered() -> None:
    a = fire_run_id("report", at(2026, 1, 1, 0, 5))
    assert a == fire_run_id("report", at(2026, 1, 1, 0, 5))
    assert a != fire_run_id("other", at(2026, 1, 1, 0, 5))
    later = fire_run_id("report", at(2026, 1, 1, 0, 10))
    assert a.startswith("r_") and len(a) == 28 and a < later


def test_the_night_clocks_go_back_a_fixed_time_fires_once() -> None:
    start = at(2026, 10, 24, 22, 40)  # Berlin leaves summer time on 25 October, 03:00 -> 02:00
    assert fires("30 2 * * *", start, 2, "Europe/Berlin") == ["Sun 25 00:30", "Mon 26 01:30"]
    # Every half hour is every half hour: both passes of the repeated hour.
    assert fires("*/30 * * * *", at(2026, 10, 24, 23, 50), 4, "Europe/Berlin") == [
        "Sun 25 00:00",
        "Sun 25 00:30",
        "Sun 25 01:00",
        "Sun 25 01:30",
    ]


def test_the_night_clocks_go_forward_a_missing_time_fires_after_the_gap() -> None:
    start = at(2026, 3, 28, 12)  # Berlin: 29 March, 02:00 -> 03:00; 02:30 does not exist
    assert fires("30 2 * * *", start, 2, "Europe/Berlin") == ["Sun 29 01:30", "Mon 30 00:30"]
