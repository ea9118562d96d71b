"""The durable outbox: events for the control plane, committed with the run state.

Every event gets the next per-agent sequence number (1, 2, 3...) in the same
SQLite transaction that commits the run step it describes, so an event exists
exactly when its step does: a killed agent neither loses nor invents one.
Numbers are handed out from a one-row counter, never from ``max(seq)``, so
they stay contiguous after deletions.

Storage: one row per ``append`` (a committed step's events: about twenty for
a ten-element run), keyed by its first sequence number, with the count and
the events as one JSON text (see ``_encode``).  One insert and one JSON
encoding per step instead of one per event; the wire still carries one
event per seq.  Events leave the outbox only when the control plane
acknowledges them: ``ack(seq)`` deletes the rows whose events are all at or
below ``seq`` and trims the one row that straddles it, so the rows always
hold exactly the unacknowledged events and ``min(seq)`` is the first of them.

The outbox has a bound (``limit``).  Reaching it never drops an event: it
makes the dispatcher refuse *new* runs (``outbox_full``) while runs already
accepted keep reporting.

Business data stays local: :func:`minimise` strips run outputs and page
field values unless the ``report_outputs`` setting allows them; secrets are
never in a run result to begin with.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from agent.errors import StoreError
from agent.flow.engine import Visit
from agent.protocol.frames import Event
from agent.store.sqlite import SqliteStore

log = logging.getLogger("flow_agent.outbox")

DEFAULT_LIMIT: Final = 100_000
# One event must fit a frame with room to spare; a run with a huge path or
# huge outputs is reported trimmed rather than not at all.
MAX_EVENT_BYTES: Final = 256 * 1024
_KEEP_PATH: Final = 200
# Elements a run stays inside after the step that entered them.
_WAITING_TYPES: Final = frozenset({"page", "step", "wait", "subflow"})


def connection(store: SqliteStore) -> sqlite3.Connection:
    """The store's one writer connection, so outbox rows join its transactions.

    ``SqliteStore`` has no public accessor; the outbox must write through the
    very connection whose transaction the runner holds open.
    """
    conn: sqlite3.Connection = store._conn
    return conn


# One encoder for every event: json.dumps with options builds a new one per call.
_ENCODE: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode


class _Iso:
    """``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")``, cheaper.

    A run's twenty events fall within a second or two, most of them within
    the same millisecond, so the date and time of day are formatted once per
    second and the text once per millisecond.  The rounding is
    ``fromtimestamp``'s (the fraction to the nearest microsecond, half to
    even), so the text is the same to the character.
    """

    __slots__ = ("_ms", "_prefix", "_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._ms = -1
        self._text = ""

    def __call__(self, ts: float) -> str:
        second = int(ts) if ts >= 0 else math.floor(ts)
        micros = round((ts - second) * 1e6)
        if micros >= 1_000_000:
            second += 1
            micros -= 1_000_000
        ms = micros // 1000
        if second == self._second:
            if ms == self._ms:
                return self._text
        else:
            day = datetime.fromtimestamp(second, UTC).replace(tzinfo=None)
            self._prefix = day.isoformat(timespec="seconds")
            self._second = second
        self._ms = ms
        self._text = text = f"{self._prefix}.{ms:03d}+00:00"
        return text


iso: Final = _Iso()


def minimise(result: dict[str, Any], *, report_outputs: bool) -> dict[str, Any]:
    """The run result as it may leave this host.

    Without ``report_outputs``: no ``outputs`` key, and a waiting page keeps
    its shape (element, outcomes, field names and types) but loses the
    current field values and the title/content rendered from values.  A
    result over ``MAX_EVENT_BYTES`` as JSON loses its outputs and the older
    part of its path and says ``truncated``.
    """
    return _fit(_strip(result, report_outputs=report_outputs))


def _strip(result: dict[str, Any], *, report_outputs: bool) -> dict[str, Any]:
    data = dict(result)
    waiting = data.get("waiting")
    if not report_outputs:
        data.pop("outputs", None)
        if isinstance(waiting, dict):
            waiting = {k: v for k, v in waiting.items() if k not in ("title", "content")}
            fields = waiting.get("fields")
            if isinstance(fields, list):
                waiting["fields"] = [
                    {k: v for k, v in f.items() if k != "current"} if isinstance(f, dict) else f
                    for f in fields
                ]
            data["waiting"] = waiting
    return data


def _fit(data: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(data, ensure_ascii=False, default=str)
    if len(text.encode("utf-8")) > MAX_EVENT_BYTES:
        data.pop("outputs", None)
        path = data.get("path")
        if isinstance(path, list) and len(path) > _KEEP_PATH:
            data["path"] = path[-_KEEP_PATH:]
            data["path_trimmed"] = len(path) - _KEEP_PATH
        data["truncated"] = True
    return data


@dataclass(frozen=True, slots=True)
class NewEvent:
    kind: str
    run_id: str | None
    at: str
    data: dict[str, Any]


# A row's text is ``[run_id, [entry, ...]]``, one entry per event in seq order.
# An entry is ``[kind, run_id, at, data]`` for any event, or, for the element
# events of the row's own run (most events, and their dicts are what costs
# most to encode and store), ``[1, at, element, type, visit]`` for
# element.entered and ``[2, at, element, visit, duration_ms]`` for element.left.
_ENTERED: Final = 1
_LEFT: Final = 2
# outbox_seq is a view (migration 6): the higher of outbox_counter and the
# last number the rows hold, so a step writes its row and nothing else.
_LAST: Final = "SELECT last FROM outbox_seq WHERE id = 1"
_INSERT: Final = "INSERT INTO outbox (seq, count, events) VALUES (?, ?, ?)"
_PENDING_FIRST: Final = (
    "SELECT seq, events FROM outbox WHERE seq >= coalesce("
    "(SELECT max(seq) FROM outbox WHERE seq <= ?), 0) ORDER BY seq LIMIT 16"
)
_PENDING_NEXT: Final = "SELECT seq, events FROM outbox WHERE seq > ? ORDER BY seq LIMIT 16"
# Before rows go, the counter keeps the highest number they carry.
_KEEP_LAST: Final = (
    "UPDATE outbox_counter SET last = max((SELECT last FROM outbox_seq WHERE id = 1), ?)"
    " WHERE id = 1"
)
_DEPTH: Final = (
    "SELECT coalesce((SELECT last FROM outbox_seq WHERE id = 1)"
    " - (SELECT min(seq) FROM outbox) + 1, 0)"
)


def _events(first: int, text: str, *, skip: int = 0) -> Iterator[Event]:
    """The events of one row, from its ``skip``-th on."""
    run_id, entries = json.loads(text)
    for offset in range(skip, len(entries)):
        entry = entries[offset]
        code = entry[0]
        if code == _ENTERED:
            _, at, element, element_type, visit = entry
            kind = "element.entered"
            data = {"element": element, "type": element_type, "visit": visit}
            yield Event(seq=first + offset, kind=kind, run_id=run_id, at=at, data=data)
        elif code == _LEFT:
            _, at, element, visit, duration = entry
            data = {"element": element, "visit": visit, "duration_ms": duration}
            yield Event(seq=first + offset, kind="element.left", run_id=run_id, at=at, data=data)
        else:
            kind, event_run, at, data = entry
            yield Event(seq=first + offset, kind=kind, run_id=event_run, at=at, data=data)


class Outbox:
    """The outbox table of one store; all calls run on the store's thread."""

    def __init__(
        self,
        store: SqliteStore,
        *,
        limit: int = DEFAULT_LIMIT,
        on_append: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.limit = limit
        self._conn = connection(store)
        # Told after events were added (the link wakes its sender).
        self.on_append = on_append

    def _fail(self, exc: sqlite3.Error, doing: str) -> StoreError:
        return StoreError(f"cannot {doing} in {self.store.path}: {exc}")

    def append(self, events: Sequence[NewEvent]) -> int:
        """Add events with the next sequence numbers; returns the last one.

        Joins the caller's transaction when one is open, else opens its own.
        """
        if not events:
            return self.last_seq()
        entries = [[e.kind, e.run_id, e.at, e.data] for e in events]
        return self.append_encoded(_ENCODE([None, entries]), len(entries))

    def append_encoded(self, text: str, count: int) -> int:
        """``append`` for one row's text (see ``_ENTERED``'s comment) of ``count`` events."""
        conn = self._conn
        if count <= 0:
            # A row of no events would take the next number and hold no event of
            # it: the number would be given out again, and the row never acked.
            return self.last_seq()
        with self.store.transaction():
            try:
                (last,) = conn.execute(_LAST).fetchone()
                conn.execute(_INSERT, (last + 1, count, text))
                last += count
            except sqlite3.Error as exc:
                raise self._fail(exc, "add events to the outbox") from exc
        if self.on_append is not None:
            self.on_append()
        return int(last)

    def pending(self, *, after: int, limit: int = 500) -> list[Event]:
        """Unacknowledged events with ``seq > after``, oldest first, at most ``limit``."""
        found: list[Event] = []
        if limit <= 0:
            return found
        # The row holding ``after + 1`` may start below it: begin with the last
        # row that starts at or before it.  Rows are read a slice at a time
        # and decoded only as far as needed.
        sql = _PENDING_FIRST
        start = after + 1
        try:
            while rows := self._conn.execute(sql, (start,)).fetchall():
                for first, text in rows:
                    for event in _events(first, text, skip=max(after + 1 - first, 0)):
                        found.append(event)
                        if len(found) >= limit:
                            return found
                sql, start = _PENDING_NEXT, rows[-1][0]
        except sqlite3.Error as exc:
            raise self._fail(exc, "read the outbox") from exc
        return found

    def ack(self, seq: int) -> int:
        """The control plane stored every event up to ``seq``: drop them; returns how many."""
        conn = self._conn
        with self.store.transaction():
            try:
                conn.execute(_KEEP_LAST, (0,))
                (dropped,) = conn.execute(
                    "SELECT coalesce(sum(count), 0) FROM outbox"
                    " WHERE seq <= ? AND seq + count - 1 <= ?",
                    (seq, seq),
                ).fetchone()
                conn.execute(
                    "DELETE FROM outbox WHERE seq <= ? AND seq + count - 1 <= ?", (seq, seq)
                )
                # Rows do not overlap, so at most one is left that starts at or below
                # seq, and it holds later events too: keep only those, so that the
                # rows hold exactly the unacknowledged events.
                row = conn.execute(
                    "SELECT seq, count, events FROM outbox WHERE seq <= ?", (seq,)
                ).fetchone()
                if row is not None:
                    first, count, text = row
                    drop = seq - first + 1
                    run_id, entries = json.loads(text)
                    conn.execute(
                        "UPDATE outbox SET seq = ?, count = ?, events = ? WHERE seq = ?",
                        (seq + 1, count - drop, _ENCODE([run_id, entries[drop:]]), first),
                    )
                    dropped += drop
            except sqlite3.Error as exc:
                raise self._fail(exc, "remove acknowledged events") from exc
        return int(dropped)

    def last_seq(self) -> int:
        row = self._conn.execute(_LAST).fetchone()
        return int(row[0])

    def first_seq(self) -> int | None:
        row = self._conn.execute("SELECT min(seq) FROM outbox").fetchone()
        return None if row[0] is None else int(row[0])

    def depth(self) -> int:
        """Events not yet acknowledged (contiguous, so no table scan).

        One statement: the API asks before every new run (``full``).
        """
        row = self._conn.execute(_DEPTH).fetchone()
        return int(row[0])

    def full(self) -> bool:
        return self.depth() >= self.limit

    def skip_to(self, seq: int) -> None:
        """Hand out numbers after ``seq`` from now on (never backwards)."""
        with self.store.transaction():
            self._conn.execute(_KEEP_LAST, (seq,))

    def reset(self) -> None:
        """Forget every event and restart numbering: a new identity starts at seq 1."""
        with self.store.transaction():
            self._conn.execute("DELETE FROM outbox")
            self._conn.execute("DELETE FROM outbox_open")
            self._conn.execute("UPDATE outbox_counter SET last = 0 WHERE id = 1")


class OutboxObserver:
    """The runner's observer: turns every committed step into outbox events.

    Called inside the step's transaction, so the events commit with it.
    ``mono`` must be the clock the engines time their visits with (see
    :class:`agent.link.catalog.TimedCatalog`); ``clock`` is wall time.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        report_outputs: bool = False,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.report_outputs = report_outputs
        self.clock = clock
        self.mono = mono
        self._conn = outbox._conn
        # Told about a run's first commit (the dispatcher acks start_run on it).
        self.on_started: Callable[[str], None] | None = None

    def committed(
        self,
        *,
        result: dict[str, Any],
        previous: str | None,
        visits: tuple[Visit, ...],
        parent_id: str | None,
    ) -> None:
        run_id = str(result["run_id"])
        now, mono = self.clock(), self.mono()
        at_now = iso(now)
        status = result["status"]
        # Fitted to MAX_EVENT_BYTES below, once the whole row is encoded.
        data = _strip(result, report_outputs=self.report_outputs)
        # Entries as the row stores them (see _ENTERED's comment).
        entries: list[list[Any]] = []
        if previous is None:
            entries.append(["run.started", run_id, at_now, data])
        else:
            entries.extend(self._close_open_visit(run_id, now))
        waiting = result.get("waiting") or {}
        last = len(visits) - 1
        for index, visit in enumerate(visits):
            entered = now - max(mono - visit.started, 0.0)
            element = visit.element
            entries.append([_ENTERED, iso(entered), element, visit.type, visit.visit])
            stays = index == last and (
                (status == "running" and visit.type == "message")
                or (
                    status == "waiting"
                    and visit.type in _WAITING_TYPES
                    and waiting.get("element") == element
                )
            )
            if stays:
                self._open_visit(run_id, visit, entered)
            else:
                duration = round(max(visit.ended - visit.started, 0.0) * 1000, 3)
                left = now - max(mono - visit.ended, 0.0)
                entries.append([_LEFT, iso(left), element, visit.visit, duration])
        if status == "waiting" and (previous != "waiting" or visits):
            entries.append(["run.waiting", run_id, at_now, data])
        elif status in ("completed", "failed", "cancelled"):
            entries.append([f"run.{status}", run_id, at_now, data])
        if not entries:
            return  # a commit with nothing to report (waiting on, after a reset)
        text = _ENCODE([run_id, entries])
        # UTF-8 takes at most 4 bytes a character: a row this short holds no
        # result over the bound, and the usual row is far shorter.
        if len(text) > MAX_EVENT_BYTES // 4:
            fitted = _fit(dict(data))
            data.clear()
            data.update(fitted)  # the run.* entries hold this very dict
            text = _ENCODE([run_id, entries])
        self.outbox.append_encoded(text, len(entries))
        if previous is None and self.on_started is not None:
            self.on_started(run_id)

    def _open_visit(self, run_id: str, visit: Visit, entered: float) -> None:
        try:
            self._conn.execute(
                "INSERT OR REPLACE INTO outbox_open (run_id, element, visit, entered_at)"
                " VALUES (?, ?, ?, ?)",
                (run_id, visit.element, visit.visit, entered),
            )
        except sqlite3.Error as exc:
            raise self.outbox._fail(exc, "record an open element visit") from exc

    def _close_open_visit(self, run_id: str, now: float) -> list[list[Any]]:
        try:
            row = self._conn.execute(
                "SELECT element, visit, entered_at FROM outbox_open WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                return []
            self._conn.execute("DELETE FROM outbox_open WHERE run_id = ?", (run_id,))
        except sqlite3.Error as exc:
            raise self.outbox._fail(exc, "close an open element visit") from exc
        element, visit, entered = row
        # Wall time: the visit may have spanned a restart, which a monotonic clock cannot.
        duration = max(now - float(entered), 0.0) * 1000
        return [[_LEFT, iso(now), element, visit, round(duration, 3)]]


__all__ = [
    "DEFAULT_LIMIT",
    "MAX_EVENT_BYTES",
    "NewEvent",
    "Outbox",
    "OutboxObserver",
    "connection",
    "iso",
    "minimise",
]
