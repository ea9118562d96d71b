"""Runs: writing, reading, listing, timers, and the queries' indexes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from store_helpers import FakeClock, MakeRun

from agent.store import RunExists, RunRecord, SqliteStore, UnknownRun


def test_insert_then_get_returns_the_same_record(store: SqliteStore, make_run: MakeRun) -> None:
    rec = make_run("r1", parent_id=None, state='{"vars": {"n": 1.5}, "path": ["a"]}')
    store.insert_run(rec)
    assert store.get_run("r1") == rec
    assert store.get_run("nope") is None


def test_update_replaces_status_state_and_timer_and_stamps_the_clock(
    store: SqliteStore, make_run: MakeRun, clock: FakeClock
) -> None:
    store.insert_run(make_run("r1", created_at=100.0))
    clock.now = 250.5
    store.update_run("r1", status="waiting", state='{"at": "timer"}', wake_at=900.0)
    rec = store.get_run("r1")
    assert rec is not None
    assert (rec.status, rec.state, rec.wake_at) == ("waiting", '{"at": "timer"}', 900.0)
    assert (rec.created_at, rec.updated_at) == (100.0, 250.5)

    clock.now = 901.0
    store.update_run("r1", status="completed", state='{"at": "end"}')
    rec = store.get_run("r1")
    assert rec is not None
    assert (rec.status, rec.wake_at, rec.updated_at) == ("completed", None, 901.0)


def test_duplicate_run_id_is_refused(store: SqliteStore, make_run: MakeRun) -> None:
    store.insert_run(make_run("r1", state='{"first": true}'))
    with pytest.raises(RunExists, match="run r1 is already stored"):
        store.insert_run(make_run("r1", state='{"second": true}'))
    rec = store.get_run("r1")
    assert rec is not None and rec.state == '{"first": true}'


def test_updating_an_unknown_run_is_an_error(store: SqliteStore) -> None:
    with pytest.raises(UnknownRun, match="run ghost is not stored"):
        store.update_run("ghost", status="running", state="{}")


def test_unknown_status_is_a_caller_bug(store: SqliteStore, make_run: MakeRun) -> None:
    with pytest.raises(ValueError, match="unknown run status 'done'"):
        store.insert_run(make_run("r1", status="done"))
    store.insert_run(make_run("r1"))
    with pytest.raises(ValueError):
        store.update_run("r1", status="paused", state="{}")
    with pytest.raises(ValueError):
        store.list_runs(status="finished")
    assert store.get_run("r1") == make_run("r1")


@pytest.fixture
def populated(store: SqliteStore, make_run: MakeRun) -> SqliteStore:
    store.insert_run(make_run("a", created_at=10.0, flow_id="orders"))
    store.insert_run(make_run("b", created_at=20.0, flow_id="invoices", status="waiting"))
    store.insert_run(make_run("b.1", created_at=21.0, flow_id="approve", parent_id="b"))
    store.insert_run(make_run("b.2", created_at=22.0, flow_id="approve", parent_id="b"))
    # Same instant as "c": the later insert counts as newer.
    store.insert_run(make_run("c", created_at=30.0, flow_id="orders", status="completed"))
    store.insert_run(make_run("d", created_at=30.0, flow_id="orders", status="failed"))
    return store


def ids(records: list[RunRecord]) -> list[str]:
    return [r.run_id for r in records]


def test_list_runs_is_top_level_newest_first(populated: SqliteStore) -> None:
    assert ids(populated.list_runs()) == ["d", "c", "b", "a"]
    assert ids(populated.list_runs(top_level=False)) == ["d", "c", "b.2", "b.1", "b", "a"]
    assert ids(populated.list_runs(limit=2)) == ["d", "c"]


def test_list_runs_filters(populated: SqliteStore) -> None:
    assert ids(populated.list_runs(flow_id="orders")) == ["d", "c", "a"]
    assert ids(populated.list_runs(status="running")) == ["a"]
    assert ids(populated.list_runs(status="running", top_level=False)) == ["b.2", "b.1", "a"]
    assert ids(populated.list_runs(flow_id="orders", status="completed")) == ["c"]
    assert ids(populated.list_runs(flow_id="approve")) == []
    assert ids(populated.list_runs(flow_id="approve", top_level=False)) == ["b.2", "b.1"]


def test_children_oldest_first(populated: SqliteStore) -> None:
    assert ids(populated.children("b")) == ["b.1", "b.2"]
    assert populated.children("a") == []


def test_count_runs_by_status_includes_zeroes(populated: SqliteStore) -> None:
    assert populated.count_runs_by_status() == {
        "cancelled": 0,
        "completed": 1,
        "failed": 1,
        "running": 3,
        "waiting": 1,
    }


def test_due_runs_are_waiting_runs_whose_timer_passed(
    store: SqliteStore, make_run: MakeRun
) -> None:
    store.insert_run(make_run("late", status="waiting", wake_at=200.0))
    store.insert_run(make_run("early", status="waiting", wake_at=100.0))
    store.insert_run(make_run("input", status="waiting"))  # waits on a person
    store.insert_run(make_run("running", status="running", wake_at=50.0))

    assert ids(store.due_runs(99.9)) == []
    assert ids(store.due_runs(100.0)) == ["early"]
    assert ids(store.due_runs(1e12)) == ["early", "late"]
    assert ids(store.due_runs(1e12, limit=1)) == ["early"]

    store.update_run("early", status="running", state="{}")  # woken: timer cleared
    assert ids(store.due_runs(1e12)) == ["late"]


def test_listing_and_due_queries_use_indexes(populated: SqliteStore, state_dir: Path) -> None:
    """Every read the store issues is answered from an index, without a sort."""
    issued: list[str] = []
    populated._conn.set_trace_callback(issued.append)  # records the expanded SQL
    populated.list_runs()
    populated.list_runs(top_level=False, status="waiting")
    populated.list_runs(flow_id="orders")
    populated.children("b")
    populated.due_runs(1e12)
    populated.get_run("a")
    populated._conn.set_trace_callback(None)
    assert len(issued) == 6

    reader = sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True)
    try:
        for sql in issued:
            plan = " | ".join(row[3] for row in reader.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "USING" in plan and "INDEX" in plan, (sql, plan)
            assert "TEMP B-TREE" not in plan, (sql, plan)
    finally:
        reader.close()
