"""Schedule triggers over a real store and runner, on a clock moved by hand.

No test waits for a real minute: the scheduler is ticked at chosen instants,
and its run starts are driven when the test says so (or dropped, for a crash).
"""

from __future__ import annotations

import pytest

from agent.link.outbox import NewEvent, Outbox
from agent.runtime.triggers import MISFIRE_GRACE, fire_run_id

from .conftest import Clock, World, at, publish, scheduled

EVERY_5 = {"schedule": "*/5 * * * *"}


async def test_each_fire_time_starts_exactly_one_run(world: World, clock: Clock) -> None:
    publish(world.store, scheduled("report", EVERY_5))
    scheduler, starts = world.scheduler()
    assert scheduler.tick() == []  # first seen at 08:00:30: counts from now
    assert scheduler.next_time == at(2026, 1, 5, 8, 5)
    clock.now = at(2026, 1, 5, 8, 5)
    fired = scheduler.tick()
    assert [f.fire_time for f in fired] == [at(2026, 1, 5, 8, 5)]
    for moment in (at(2026, 1, 5, 8, 5), at(2026, 1, 5, 8, 5, 20), at(2026, 1, 5, 8, 9, 59)):
        clock.now = moment
        assert scheduler.tick() == []  # the same fire time, ticked again: nothing more
    await starts.drive()
    clock.now = at(2026, 1, 5, 8, 10, 1)
    assert len(scheduler.tick()) == 1
    await starts.drive()
    expected = [fire_run_id("report", at(2026, 1, 5, 8, m)) for m in (5, 10)]
    assert [r[0] for r in world.runs()] == expected
    assert all(status == "completed" for _, _, status in world.runs())
    assert [f[2] for f in world.fires()] == expected
    assert world.fired == ["report", "report"]


async def test_a_restart_in_the_middle_does_not_fire_twice(world: World, clock: Clock) -> None:
    publish(world.store, scheduled("report", EVERY_5))
    first, first_starts = world.scheduler()
    first.tick()
    clock.now = at(2026, 1, 5, 8, 5)
    assert len(first.tick()) == 1
    first_starts.drop()  # killed after the fire was recorded, before its run started
    assert world.runs() == []

    clock.now = at(2026, 1, 5, 8, 5, 10)
    second, second_starts = world.scheduler()
    recovered = second.recover()
    assert [f.run_id for f in recovered] == [fire_run_id("report", at(2026, 1, 5, 8, 5))]
    assert second.tick() == []  # that fire time is done: recorded by the first scheduler
    await second_starts.drive()
    assert len(world.runs()) == 1

    # A third incarnation finds the run there: nothing to recover, nothing to fire.
    third, _ = world.scheduler()
    assert third.recover() == [] and third.tick() == []
    # Even a start of the same fire forced through again finds the run and stops.
    await third.start(recovered[0])
    assert len(world.runs()) == 1 and world.fired == ["report"]


async def test_two_schedulers_ticking_the_same_instant_fire_once(
    world: World, clock: Clock
) -> None:
    publish(world.store, scheduled("report", EVERY_5))
    one, one_starts = world.scheduler()
    two, two_starts = world.scheduler()
    one.tick()
    clock.now = at(2026, 1, 5, 8, 5)
    assert len(one.tick()) == 1
    assert two.tick() == []
    await one_starts.drive()
    await two_starts.drive()
    assert len(world.runs()) == 1


async def test_two_schedules_of_one_flow_at_one_minute_start_one_run(
    world: World, clock: Clock
) -> None:
    publish(world.store, scheduled("report", EVERY_5, {"schedule": "5 8 * * *"}))
    scheduler, starts = world.scheduler()
    scheduler.tick()
    clock.now = at(2026, 1, 5, 8, 5)
    assert len(scheduler.tick()) == 1
    await starts.drive()
    assert len(world.runs()) == 1 and world.fired == ["report"]


async def test_fires_missed_while_down_run_once_on_start(world: World, clock: Clock) -> None:
    publish(world.store, scheduled("report", EVERY_5))
    before, _ = world.scheduler()
    before.tick()
    clock.now = at(2026, 1, 5, 9, 2)  # down from 08:00:30 to 09:02: twelve fire times missed
    after, starts = world.scheduler()
    fired = after.tick()
    assert [(f.fire_time, f.caught_up) for f in fired] == [(at(2026, 1, 5, 9, 0), True)]
    assert after.tick() == []
    await starts.drive()
    clock.now = at(2026, 1, 5, 9, 5)
    assert [f.caught_up for f in after.tick()] == [False]
    await starts.drive()
    assert len(world.runs()) == 2


async def test_catch_up_none_skips_what_was_missed(world: World, clock: Clock) -> None:
    publish(world.store, scheduled("report", EVERY_5))
    before, _ = world.scheduler(catch_up="none")
    before.tick()
    clock.now = at(2026, 1, 5, 9, 2)
    after, starts = world.scheduler(catch_up="none")
    assert after.tick() == []
    clock.now = at(2026, 1, 5, 9, 5) + MISFIRE_GRACE - 1  # late, but within the grace
    assert len(after.tick()) == 1
    await starts.drive()
    assert [r[0] for r in world.runs()] == [fire_run_id("report", at(2026, 1, 5, 9, 5))]


async def test_a_schedule_in_a_time_zone(world: World, clock: Clock) -> None:
    weekday_mornings = {"schedule": "30 8 * * 1-5", "timezone": "Europe/Berlin"}
    publish(world.store, scheduled("standup", weekday_mornings))
    scheduler, starts = world.scheduler()
    clock.now = at(2026, 1, 2, 12)  # a Friday, winter (UTC+1)
    scheduler.tick()
    assert scheduler.next_time == at(2026, 1, 5, 7, 30)  # Monday, not the weekend
    clock.now = at(2026, 1, 5, 7, 30)
    assert len(scheduler.tick()) == 1
    clock.now = at(2026, 7, 3, 6, 29)  # summer (UTC+2), the Friday before: one catch-up
    scheduler.tick()
    assert scheduler.next_time == at(2026, 7, 3, 6, 30)
    clock.now = at(2026, 7, 3, 6, 30)
    assert [f.fire_time for f in scheduler.tick()] == [at(2026, 7, 3, 6, 30)]
    await starts.drive()
    assert len(world.runs()) == 3


async def test_removed_triggers_stop_firing_and_new_ones_count_from_now(
    world: World, clock: Clock
) -> None:
    publish(world.store, scheduled("report", EVERY_5))
    scheduler, starts = world.scheduler()
    scheduler.tick()
    clock.now = at(2026, 1, 5, 8, 5)
    assert len(scheduler.tick()) == 1
    await starts.drive()
    publish(world.store, scheduled("report", version=2))  # re-synced without the trigger
    for minute in (10, 15, 20):
        clock.now = at(2026, 1, 5, 8, minute)
        assert scheduler.tick() == []
    assert scheduler.next_time is None
    hourly = {"schedule": "0 * * * *"}
    publish(world.store, scheduled("report", hourly, version=3))  # a new trigger
    clock.now = at(2026, 1, 5, 8, 30)
    assert scheduler.tick() == []  # nothing owed for 08:00: it did not exist then
    clock.now = at(2026, 1, 5, 9, 0)
    assert len(scheduler.tick()) == 1
    await starts.drive()
    assert [version for version in _versions(world)] == [1, 3]


def _versions(world: World) -> list[int]:
    records = world.store.list_runs(top_level=False, limit=100)
    return [r.version for r in reversed(records)]


async def test_a_recovered_fire_whose_flow_is_gone_records_why_once(
    world: World, clock: Clock
) -> None:
    publish(world.store, scheduled("report", EVERY_5))
    first, starts = world.scheduler()
    first.tick()
    clock.now = at(2026, 1, 5, 8, 5)
    first.tick()
    starts.drop()
    # Deactivated before the agent came back (the store has no call for it).
    world.store._conn.execute("UPDATE flows SET active = 0 WHERE flow_id = 'report'")
    second, second_starts = world.scheduler()
    assert len(second.recover()) == 1
    await second_starts.drive()
    assert world.runs() == []
    [(_, _, _, error)] = world.fires()
    assert error is not None and "report" in error
    third, _ = world.scheduler()
    assert third.recover() == []


class Enough(Exception):
    """Ends the scheduler's loop after the naps a test wants to see."""


async def test_the_loop_sleeps_until_the_next_fire_and_rescans_meanwhile(
    world: World, clock: Clock
) -> None:
    publish(world.store, scheduled("report", EVERY_5))
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        clock.now += seconds
        if len(naps) == 5:
            raise Enough

    scheduler, starts = world.scheduler(sleep=sleep, rescan=120.0)
    with pytest.raises(Enough):
        await scheduler.run()
    # 08:00:30 -> the rescan (120 s) -> 08:04:30 is 30 s before the fire -> 08:05 fires ...
    assert naps == [120.0, 120.0, 30.0, 120.0, 120.0]
    await starts.drive()
    assert [r[0] for r in world.runs()] == [fire_run_id("report", at(2026, 1, 5, 8, 5))]


async def test_a_fire_while_the_outbox_is_full_is_recorded_skipped_and_not_retried(
    world: World, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(world.store, limit=2)

    def accepting() -> bool | str:
        return "outbox_full" if outbox.full() else True  # as the daemon answers the API

    publish(world.store, scheduled("report", EVERY_5))
    scheduler, starts = world.scheduler(accepting=accepting)
    scheduler.tick()
    event = NewEvent(kind="run.started", run_id="r_other", at="2026-01-05T08:00:00Z", data={})
    outbox.append([event, event])  # two events wait for the control plane: full
    clock.now = at(2026, 1, 5, 8, 5)
    assert scheduler.tick() == []
    skipped = fire_run_id("report", at(2026, 1, 5, 8, 5))
    assert world.fires() == [("report", int(clock.now), skipped, "skipped: outbox_full")]
    assert starts.pending == [] and world.runs() == []
    assert world.fired == ["report"]  # the fire happened; only its run was refused
    assert "skipped" in caplog.text and "outbox_full" in caplog.text

    # Ticked again, restarted, and once the outbox drains: that fire never runs.
    assert scheduler.tick() == []
    clock.now = at(2026, 1, 5, 8, 6)
    again, again_starts = world.scheduler(accepting=accepting)
    assert again.recover() == [] and again.tick() == []
    outbox.ack(outbox.last_seq())
    assert again.tick() == []
    assert again_starts.pending == [] and world.runs() == []

    # The next fire time, with room in the outbox, runs as usual.
    clock.now = at(2026, 1, 5, 8, 10)
    assert [f.run_id for f in again.tick()] == [fire_run_id("report", clock.now)]
    await again_starts.drive()
    assert [r[0] for r in world.runs()] == [fire_run_id("report", clock.now)]
    assert len(world.fires()) == 2 and world.fired == ["report", "report"]
