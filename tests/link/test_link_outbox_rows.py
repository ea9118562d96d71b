"""The outbox's storage: one row per step, events numbered one by one.

A row holds a committed step's events under the seq of its first one; an
acknowledgement that ends inside a row trims it, so the rows always hold
exactly the unacknowledged events.  Migration 5 turns the one-event rows of
schema 4 into rows of this kind without touching their data.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlite_utils import Database

from agent.link.outbox import NewEvent, Outbox, iso
from agent.store.migrations import MIGRATIONS, apply_migrations
from agent.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "state", synchronous="off")
    try:
        yield opened
    finally:
        opened.close()


def _step(n: int, tag: str) -> list[NewEvent]:
    return [
        NewEvent(
            "element.entered", f"run-{tag}", "2026-01-01T00:00:00.000+00:00", {"i": f"{tag}{i}"}
        )
        for i in range(n)
    ]


def _rows(store: SqliteStore) -> list[tuple[int, int]]:
    return store._conn.execute("SELECT seq, count FROM outbox ORDER BY seq").fetchall()


def test_a_step_is_one_row_and_its_events_keep_their_own_numbers(store: SqliteStore) -> None:
    outbox = Outbox(store)
    assert outbox.append(_step(3, "a")) == 3
    assert outbox.append(_step(4, "b")) == 7
    assert _rows(store) == [(1, 3), (4, 4)]
    events = outbox.pending(after=0)
    assert [e.seq for e in events] == list(range(1, 8))
    assert [e.data["i"] for e in events] == ["a0", "a1", "a2", "b0", "b1", "b2", "b3"]
    assert [e.run_id for e in events] == ["run-a"] * 3 + ["run-b"] * 4


def test_pending_starts_inside_a_row_and_stops_at_the_limit(store: SqliteStore) -> None:
    outbox = Outbox(store)
    for tag in "abcd":
        outbox.append(_step(5, tag))
    got = outbox.pending(after=7, limit=6)
    assert [e.seq for e in got] == [8, 9, 10, 11, 12, 13]
    assert [e.data["i"] for e in got] == ["b2", "b3", "b4", "c0", "c1", "c2"]
    assert outbox.pending(after=20) == []
    assert [e.seq for e in outbox.pending(after=19)] == [20]


def test_an_ack_inside_a_row_trims_it_and_the_rest_is_sent_once(store: SqliteStore) -> None:
    outbox = Outbox(store, limit=8)
    outbox.append(_step(5, "a"))
    outbox.append(_step(5, "b"))
    assert outbox.full()
    assert outbox.ack(7) == 7
    # The row of b kept b2..b4 only, renumbered from its first pending event.
    assert _rows(store) == [(8, 3)]
    assert outbox.first_seq() == 8 and outbox.depth() == 3 and not outbox.full()
    assert [(e.seq, e.data["i"]) for e in outbox.pending(after=0)] == [
        (8, "b2"),
        (9, "b3"),
        (10, "b4"),
    ]
    assert outbox.ack(7) == 0  # a repeated ack changes nothing
    assert outbox.ack(10) == 3
    assert _rows(store) == [] and outbox.depth() == 0
    assert outbox.append(_step(1, "c")) == 11


def test_a_rolled_back_step_leaves_no_row_and_no_number(store: SqliteStore) -> None:
    outbox = Outbox(store)
    outbox.append(_step(2, "a"))
    with pytest.raises(RuntimeError), store.transaction():
        outbox.append(_step(20, "b"))
        raise RuntimeError("the step failed")
    assert _rows(store) == [(1, 2)]
    assert outbox.append(_step(1, "c")) == 3


@given(
    steps=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=12),
    acks=st.lists(st.integers(min_value=0, max_value=80), max_size=6),
)
def test_acks_anywhere_never_lose_or_repeat_an_event(
    tmp_path_factory: pytest.TempPathFactory, steps: list[int], acks: list[int]
) -> None:
    """The control plane's view: every event numbered, acked or still pending, once."""
    with SqliteStore.open(tmp_path_factory.mktemp("s") / "state", synchronous="off") as store:
        outbox = Outbox(store)
        expected: list[tuple[int, str]] = []
        for index, size in enumerate(steps):
            outbox.append(_step(size, f"s{index}-"))
            expected.extend((len(expected) + 1, f"s{index}-{i}") for i in range(size))
        acked = 0
        for seq in acks:
            outbox.ack(seq)
            acked = max(acked, min(seq, len(expected)))
            pending = [(e.seq, e.data["i"]) for e in outbox.pending(after=0, limit=10_000)]
            assert pending == expected[acked:]
            assert outbox.depth() == len(expected) - acked
            resent = [(e.seq, e.data["i"]) for e in outbox.pending(after=acked, limit=3)]
            assert resent == expected[acked : acked + 3]


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_iso_is_isoformat_to_the_character(ts: float) -> None:
    assert iso(ts) == datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def test_iso_at_the_edges_of_a_second() -> None:
    for ts in (1_800_000_000.0, 1_799_999_999.9999996, 1_800_000_000.0004999, 1_800_000_000.9995):
        assert iso(ts) == datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@given(st.lists(st.integers(min_value=0, max_value=3_000_000), min_size=2, max_size=40))
def test_iso_stays_exact_call_after_call(offsets: list[int]) -> None:
    """The same millisecond twice, the next one, a second back: every text is exact."""
    for offset in offsets:
        ts = 1_800_000_000 + offset / 1e6
        assert iso(ts) == datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def test_migration_5_keeps_every_waiting_event_as_it_was(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    db = Database(conn)
    apply_migrations(db, path="x", migrations=MIGRATIONS[:4])
    # Schema 4 rows, as the release before wrote them: one event each.
    odd = '{"element":"ask","note":"ünï \\"q\\"","n":1.10}'
    old = [
        (7, "run.started", "r-1", "2027-01-15T08:00:00.000+00:00", '{"run_id":"r-1"}'),
        (8, "element.entered", "r-1", "2027-01-15T08:00:00.001+00:00", odd),
        (9, "flow.rejected", None, "2027-01-15T08:00:01.000+00:00", '{"flow":"f"}'),
    ]
    conn.executemany("INSERT INTO outbox (seq, kind, run_id, at, data) VALUES (?, ?, ?, ?, ?)", old)
    conn.execute("UPDATE outbox_seq SET last = 9")
    assert apply_migrations(db, path="x") == len(MIGRATIONS)
    conn.close()
    with SqliteStore.open(tmp_path, synchronous="off") as store:
        outbox = Outbox(store)
        events = outbox.pending(after=0)
        assert [(e.seq, e.kind, e.run_id, e.at) for e in events] == [row[:4] for row in old]
        assert [e.data for e in events] == [json.loads(row[4]) for row in old]
        # The data text itself was copied, not re-encoded (1.10 stays 1.10).
        (text,) = store._conn.execute("SELECT events FROM outbox WHERE seq = 8").fetchone()
        assert odd in text
        assert outbox.first_seq() == 7 and outbox.depth() == 3
        assert outbox.append(_step(2, "new")) == 11
        assert outbox.ack(10) == 4
        assert [e.seq for e in outbox.pending(after=0)] == [11]


def test_migrations_keep_the_counter_of_an_empty_outbox(tmp_path: Path) -> None:
    # The usual state at an upgrade: everything acknowledged, 41 numbers given out.
    conn = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    db = Database(conn)
    apply_migrations(db, path="x", migrations=MIGRATIONS[:4])
    conn.execute("UPDATE outbox_seq SET last = 41")
    assert apply_migrations(db, path="x") == len(MIGRATIONS)
    conn.close()
    with SqliteStore.open(tmp_path, synchronous="off") as store:
        outbox = Outbox(store)
        assert outbox.last_seq() == 41 and outbox.depth() == 0
        assert outbox.append(_step(1, "new")) == 42  # not 1: the control plane saw 1-41


def test_outbox_seq_still_reads_as_the_last_number_given_out(store: SqliteStore) -> None:
    """``flow-agent status`` and the fault checker read ``outbox_seq`` directly."""
    outbox = Outbox(store)

    def read() -> int:
        (last,) = store._conn.execute("SELECT last FROM outbox_seq WHERE id = 1").fetchone()
        return int(last)

    assert read() == 0
    outbox.append(_step(4, "a"))
    assert read() == 4  # written by the step's row alone
    outbox.ack(4)
    assert _rows(store) == [] and read() == 4  # kept when the rows that held it go
    outbox.skip_to(9)
    assert read() == 9 and outbox.append(_step(1, "b")) == 10
    outbox.reset()
    assert read() == 0 and outbox.append(_step(1, "c")) == 1


def test_a_commit_with_nothing_to_report_writes_no_row(store: SqliteStore) -> None:
    # A run still waiting, committed again with no visit and no open element
    # (a pairing's reset clears them): no event, so no row and no number.
    from agent.link.outbox import OutboxObserver

    outbox = Outbox(store)
    observer = OutboxObserver(outbox, report_outputs=False)
    assert outbox.append(_step(2, "a")) == 2
    waiting = {"run_id": "r1", "flow": "f", "version": 1, "status": "waiting", "outputs": {}}
    with store.transaction():
        observer.committed(result=waiting, previous="waiting", visits=(), parent_id=None)
    assert _rows(store) == [(1, 2)]
    assert outbox.append_encoded("[null,[]]", 0) == 2
    assert outbox.append(_step(1, "b")) == 3  # numbering goes on, nothing collides
