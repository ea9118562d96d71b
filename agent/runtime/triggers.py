"""Schedule triggers: each cron fire time of an active flow starts exactly one run.

The cron maths is APScheduler's (3.x ``CronTrigger``); the loop around it is
ours, so that time is injected (``clock`` and ``sleep``) and the bookkeeping
lives in the agent's store rather than in a job store.

Exactly once, across restarts:

* For every fire the scheduler first commits a row ``schedule_fires(flow_id,
  fire_time, run_id)`` (primary key: flow and fire time) together with the
  schedule's mark, then starts the run.  The run id is derived from the flow
  id and the fire time (:func:`fire_run_id`), so the ``runs`` primary key
  refuses a second run for the same fire whoever tries.
* A crash between the two writes leaves a fire without its run; on the next
  start :meth:`Scheduler.recover` starts it, with the same run id.
* ``schedule_marks`` keeps, per flow and schedule (cron and time zone), the
  latest fire time handled, or when the schedule was first seen.  A new
  schedule counts from then: it never fires for times before it existed.

While the agent takes no new runs (``accepting()`` is not True: the outbox
is full, as for the API's and the control plane's starts), a due fire is
still recorded and its mark moved, with the reason in its ``error``, and
starts no run: it is skipped, logged as a warning, and neither retried nor
caught up later.

Fires missed while the agent was down (or asleep) are those between the mark
and now.  ``catch_up="once"`` runs one run for all of them, at the latest
missed fire time; ``"none"`` skips them (a fire up to ``MISFIRE_GRACE``
seconds late still counts as on time).  Nothing here needs the control
plane: schedules fire from the flows already synced to the store.

Cron fields follow the usual crontab, as ``flow/cron.py`` validates them:
day of week 0 or 7 is Sunday (APScheduler 3 counts from Monday, so the field
is translated into names), and when both day of month and day of week are
restricted, either one matching fires (as cron does; APScheduler alone would
need both).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

from agent.errors import AgentError, StoreError
from agent.flow.engine import InputInvalid
from agent.store.base import RunExists
from agent.store.sqlite import SqliteStore

from .catalog import Catalog
from .runner import Runner

log = logging.getLogger("flow_agent.triggers")

CATCH_UP: Final = ("once", "none")
MISFIRE_GRACE: Final = 60.0  # seconds late a fire may be and still count as on time
KEEP_FIRES: Final = 40 * 86400.0  # fire rows older than this are pruned at start
_WINDOWS: Final = (120.0, 7200.0, 2 * 86400.0, 40 * 86400.0, 400 * 86400.0)
_MAX_STEPS: Final = 100_000
_ULID: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Crontab counts weekdays from Sunday (0 and 7); APScheduler 3 from Monday.
_WEEKDAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

Spawn = Callable[[str, Coroutine[Any, Any, None]], object]


def _always() -> bool | str:
    return True


class ScheduleError(AgentError):
    """A schedule that cannot be computed (an unknown time zone on this host)."""


# -- cron maths ---------------------------------------------------------------------


def _day_number(text: str) -> int:
    """0-7, Sunday being 0 and 7 (a name gives 0-6)."""
    return _WEEKDAYS.index(text) if text in _WEEKDAYS else int(text)


def _weekdays(field: str) -> str:
    """A crontab day-of-week field as APScheduler 3 reads it: explicit day names."""
    days: set[int] = set()
    for item in field.lower().split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            low, high = 0, 6
        elif "-" in base:
            first, last = base.split("-")
            low, high = _day_number(first), _day_number(last)
        else:
            low = high = _day_number(base)
            if step_text:
                high = 7  # "5/2" means from 5 on, by 2
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_WEEKDAYS[day] for day in sorted(days))


def cron_trigger(cron: str, timezone: str | None = None) -> BaseTrigger:
    """APScheduler's trigger for a 5-field crontab expression in ``timezone`` (UTC)."""
    try:
        zone = ZoneInfo(timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"time zone {timezone!r} is not known on this host") from None
    minute, hour, day, month, weekday = cron.split()
    if weekday != "*":
        weekday = _weekdays(weekday)

    def trigger(day: str, weekday: str) -> CronTrigger:
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=weekday, timezone=zone
        )

    found: BaseTrigger = trigger(day, weekday)
    if not day.startswith("*") and not weekday.startswith("*"):
        found = OrTrigger([trigger(day, "*"), trigger("*", weekday)])
    if not hour.startswith("*"):
        found = _OnceInRepeatedHour(found, zone)
    return found


class _OnceInRepeatedHour(BaseTrigger):  # type: ignore[misc]
    """Crontab's rule for the night the clocks go back: a job at fixed hours
    runs once, not in both passes of the repeated hour (a job every few
    minutes or hours runs in both, as those are distinct points in time)."""

    def __init__(self, inner: BaseTrigger, zone: ZoneInfo) -> None:
        self.inner = inner
        self.zone = zone

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        for _ in range(4):
            found: datetime | None = self.inner.get_next_fire_time(previous_fire_time, now)
            if found is None or found.astimezone(UTC).astimezone(self.zone).fold == 0:
                return found
            now = found.astimezone(UTC) + timedelta(seconds=1)  # the second pass: skip it
        return None

    def __str__(self) -> str:
        return f"once per wall time ({self.inner})"


def next_fire(trigger: BaseTrigger, after: float) -> float | None:
    """The first fire time strictly after ``after`` (unix seconds)."""
    # APScheduler rounds ``now`` up to a whole second: one microsecond past
    # ``after`` makes the answer strictly later.
    start = datetime.fromtimestamp(after, UTC) + timedelta(microseconds=1)
    found = trigger.get_next_fire_time(None, start)
    return None if found is None else found.timestamp()


def latest_fire(trigger: BaseTrigger, after: float, until: float) -> float | None:
    """The last fire time in ``(after, until]``, or None when there is none."""
    first = next_fire(trigger, after)
    if first is None or first > until:
        return None
    latest = first
    # Start near ``until`` so that a long downtime costs a few steps, not one
    # per missed fire.
    for window in _WINDOWS:
        candidate = next_fire(trigger, max(after, until - window))
        if candidate is not None and candidate <= until:
            latest = candidate
            break
    for _ in range(_MAX_STEPS):
        following = next_fire(trigger, latest)
        if following is None or following > until:
            break
        latest = following
    return latest


def fire_run_id(flow_id: str, fire_time: float) -> str:
    """The run id of a fire: ``r_`` and a ULID whose time is the fire time and
    whose random part is a hash of the flow id and the fire time."""
    seconds = int(fire_time)
    digest = hashlib.sha256(f"flow-agent schedule\0{flow_id}\0{seconds}".encode()).digest()
    value = (seconds * 1000 << 80) | int.from_bytes(digest[:10], "big")
    chars = []
    for _ in range(26):
        chars.append(_ULID[value & 31])
        value >>= 5
    return "r_" + "".join(reversed(chars))


# -- the scheduler ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    flow_id: str
    cron: str
    timezone: str

    @property
    def key(self) -> str:
        return f"{' '.join(self.cron.split())}@{self.timezone}"


@dataclass(frozen=True, slots=True)
class Fire:
    flow_id: str
    fire_time: float
    run_id: str
    caught_up: bool = False  # it stands for fires missed while the agent was down


class Scheduler:
    """Fires the schedule triggers of the active flows; one per agent and store.

    ``spawn(run_id, coroutine)`` hands a run's start to whoever owns run
    tasks (the daemon's ``RunPool``).  ``on_fire(flow_id)`` is told of every
    fire recorded (the ``flow_agent_schedule_fires_total`` counter), skipped
    ones too.  ``accepting()`` is True while new runs may start, else why not
    (``outbox_full``): the API's contract, so the daemon gives both the same.
    """

    def __init__(
        self,
        *,
        store: SqliteStore,
        catalog: Catalog,
        runner: Runner,
        spawn: Spawn,
        catch_up: str = "once",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
        rescan: float = 1.0,
        on_fire: Callable[[str], None] | None = None,
        accepting: Callable[[], bool | str] = _always,
    ) -> None:
        if catch_up not in CATCH_UP:
            raise ValueError(f"catch_up is one of {CATCH_UP}, not {catch_up!r}")
        self.store = store
        self.catalog = catalog
        self.runner = runner
        self.spawn = spawn
        self.catch_up = catch_up
        self.clock = clock
        self.sleep = sleep
        self.rescan = rescan
        self.on_fire = on_fire
        self.accepting = accepting
        self.next_time: float | None = None  # the earliest fire still to come
        self._triggers: dict[Schedule, BaseTrigger] = {}
        self._broken: set[Schedule] = set()

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Recover fires a crash left without their run, then fire until cancelled.

        Wakes at the next fire time, and at least every ``rescan`` seconds to
        see flows synced or changed meanwhile.
        """
        self._guarded(self.recover)
        while True:
            self._guarded(self.tick)
            wait = self.rescan
            if self.next_time is not None:
                wait = min(wait, max(self.next_time - self.clock(), 0.0))
            await self.sleep(wait)

    def _guarded(self, step: Callable[[], object]) -> None:
        try:
            step()
        except AgentError as exc:  # the store may be busy: the next round tries again
            log.error("schedules: %s (trying again)", exc.message)

    # -- one round ------------------------------------------------------------------

    def schedules(self) -> list[Schedule]:
        """The schedule triggers of the active flows."""
        found: dict[tuple[str, str], Schedule] = {}
        for flow_id in self.catalog.active_ids():
            try:
                engine = self.catalog.active(flow_id)
            except AgentError as exc:
                log.warning("flow %s: its schedules are skipped: %s", flow_id, exc.message)
                continue
            if engine is None:
                continue
            for trigger in engine.flow.triggers:
                if trigger.schedule is not None:
                    schedule = Schedule(flow_id, trigger.schedule, trigger.timezone or "UTC")
                    found[(flow_id, schedule.key)] = schedule
        return list(found.values())

    def _trigger(self, schedule: Schedule) -> BaseTrigger | None:
        trigger = self._triggers.get(schedule)
        if trigger is None and schedule not in self._broken:
            try:
                trigger = self._triggers[schedule] = cron_trigger(schedule.cron, schedule.timezone)
            except (ScheduleError, ValueError) as exc:
                self._broken.add(schedule)
                log.error(
                    "flow %s: schedule %s never fires: %s", schedule.flow_id, schedule.key, exc
                )
        return trigger

    def tick(self, now: float | None = None) -> list[Fire]:
        """Record and start what is due at ``now``; returns the fires started."""
        now = self.clock() if now is None else now
        schedules = self.schedules()
        answer = self.accepting()
        refused = None if answer is True else str(answer or "refused")
        conn = _connection(self.store)
        fires: list[Fire] = []
        recorded: list[Fire] = []
        upcoming: list[float] = []
        try:
            with self.store.transaction():
                marks = {
                    (flow_id, key): float(last)
                    for flow_id, key, last in conn.execute(
                        "SELECT flow_id, schedule, last_fire FROM schedule_marks"
                    )
                }
                current = {(s.flow_id, s.key) for s in schedules}
                for flow_id, key in marks.keys() - current:
                    # A trigger removed (or its flow deactivated): forget where it
                    # got, so that adding it again counts from then, not from now.
                    conn.execute(
                        "DELETE FROM schedule_marks WHERE flow_id = ? AND schedule = ?",
                        (flow_id, key),
                    )
                    log.info("flow %s: schedule %s removed", flow_id, key)
                for schedule in schedules:
                    trigger = self._trigger(schedule)
                    if trigger is None:
                        continue
                    last = marks.get((schedule.flow_id, schedule.key))
                    if last is None:
                        self._mark(conn, schedule, now, now)
                        log.info("flow %s: schedule %s active", schedule.flow_id, schedule.key)
                        last = now
                    else:
                        fire = self._due(conn, schedule, trigger, last, now)
                        if fire is not None:
                            last = fire.fire_time
                            why = None if refused is None else f"skipped: {refused}"
                            if why is None:
                                fires.append(fire)
                            if self._record(conn, fire, now, error=why):
                                recorded.append(fire)
                    following = next_fire(trigger, max(last, now))
                    if following is not None:
                        upcoming.append(following)
        except sqlite3.Error as exc:
            raise StoreError(f"schedules: cannot update {self.store.path}: {exc}") from exc
        self.next_time = min(upcoming, default=None)
        for fire in recorded:
            if self.on_fire is not None:
                self.on_fire(fire.flow_id)
            if refused is not None:
                log.warning(
                    "flow %s: schedule fired for %s but starts no run: new runs are refused"
                    " (%s); this fire is skipped, not retried",
                    fire.flow_id,
                    _iso(fire.fire_time),
                    refused,
                )
                continue
            log.info(
                "flow %s: schedule fired for %s%s (run %s)",
                fire.flow_id,
                _iso(fire.fire_time),
                ", standing for the fires missed while the agent was down"
                if fire.caught_up
                else "",
                fire.run_id,
            )
        return self._launch_all(fires)

    def _due(
        self,
        conn: sqlite3.Connection,
        schedule: Schedule,
        trigger: BaseTrigger,
        last: float,
        now: float,
    ) -> Fire | None:
        latest = latest_fire(trigger, last, now)
        if latest is None:
            return None
        late = now - latest > MISFIRE_GRACE
        missed = late or next_fire(trigger, last) != latest
        self._mark(conn, schedule, latest, now)
        if late and self.catch_up == "none":
            log.warning(
                "flow %s: schedule %s missed its fires up to %s while the agent was down;"
                " skipped (schedule_catch_up = none)",
                schedule.flow_id,
                schedule.key,
                _iso(latest),
            )
            return None
        run_id = fire_run_id(schedule.flow_id, latest)
        return Fire(schedule.flow_id, float(int(latest)), run_id, caught_up=missed)

    @staticmethod
    def _mark(conn: sqlite3.Connection, schedule: Schedule, last: float, now: float) -> None:
        conn.execute(
            "INSERT INTO schedule_marks (flow_id, schedule, last_fire, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (flow_id, schedule) DO UPDATE"
            " SET last_fire = excluded.last_fire, updated_at = excluded.updated_at",
            (schedule.flow_id, schedule.key, last, now),
        )

    @staticmethod
    def _record(conn: sqlite3.Connection, fire: Fire, now: float, *, error: str | None) -> bool:
        """Record ``fire``; False when it already was (two schedules, one minute)."""
        cursor = conn.execute(
            "INSERT INTO schedule_fires (flow_id, fire_time, run_id, recorded_at, error)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (flow_id, fire_time) DO NOTHING",
            (fire.flow_id, int(fire.fire_time), fire.run_id, now, error),
        )
        return cursor.rowcount == 1

    # -- starting runs --------------------------------------------------------------

    def recover(self) -> list[Fire]:
        """Start the runs of fires recorded before a crash that started no run."""
        conn = _connection(self.store)
        now = self.clock()
        try:
            with self.store.transaction():
                conn.execute(
                    "DELETE FROM schedule_fires WHERE fire_time < ?", (int(now - KEEP_FIRES),)
                )
            rows = conn.execute(
                "SELECT flow_id, fire_time, run_id FROM schedule_fires AS f"
                " WHERE error IS NULL AND NOT EXISTS"
                " (SELECT 1 FROM runs WHERE runs.run_id = f.run_id) ORDER BY fire_time"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"schedules: cannot read {self.store.path}: {exc}") from exc
        fires = [Fire(flow_id, float(at), run_id) for flow_id, at, run_id in rows]
        for fire in fires:
            log.info(
                "flow %s: the fire of %s has no run yet; starting it",
                fire.flow_id,
                _iso(fire.fire_time),
            )
        return self._launch_all(fires)

    def _launch_all(self, fires: Iterable[Fire]) -> list[Fire]:
        launched: dict[str, Fire] = {}
        for fire in fires:
            if fire.run_id in launched or self.store.get_run(fire.run_id) is not None:
                continue
            launched[fire.run_id] = fire
            self.spawn(fire.run_id, self.start(fire))
        return list(launched.values())

    async def start(self, fire: Fire) -> None:
        """Start the run of ``fire`` (inputs take their defaults), once."""
        try:
            await self.runner.start(fire.flow_id, {}, run_id=fire.run_id)
        except RunExists:
            return  # started already: by us before a crash, or by a twin schedule
        except InputInvalid as exc:
            self._fail(fire, f"the flow's inputs need values a schedule cannot give: {exc}")
        except StoreError:
            raise  # the fire stays without its run; the next start recovers it
        except AgentError as exc:
            self._fail(fire, exc.message)

    def _fail(self, fire: Fire, why: str) -> None:
        log.error("flow %s: the schedule's run did not start: %s", fire.flow_id, why)
        try:
            _connection(self.store).execute(
                "UPDATE schedule_fires SET error = ? WHERE flow_id = ? AND fire_time = ?",
                (why[:2000], fire.flow_id, int(fire.fire_time)),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"schedules: cannot update {self.store.path}: {exc}") from exc


def _connection(store: SqliteStore) -> sqlite3.Connection:
    """The store's writer connection, so our rows join its transactions.

    ``SqliteStore`` has no public accessor (the outbox uses it the same way).
    """
    conn: sqlite3.Connection = store._conn
    return conn


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


__all__ = [
    "CATCH_UP",
    "MISFIRE_GRACE",
    "Fire",
    "Schedule",
    "ScheduleError",
    "Scheduler",
    "cron_trigger",
    "fire_run_id",
    "latest_fire",
    "next_fire",
]
