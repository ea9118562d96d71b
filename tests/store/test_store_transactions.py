"""Transactions: all or nothing, nesting, and a reader that never lets go."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import MakeRun

from agent.errors import StoreError
from agent.store import RunExists, SqliteStore


class Boom(Exception):
    pass


@pytest.fixture
def reader(state_dir: Path, store: SqliteStore) -> Iterator[sqlite3.Connection]:
    """A second, read-only connection: sees only what was committed."""
    conn = sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True, isolation_level=None)
    yield conn
    conn.close()


def committed_ids(reader: sqlite3.Connection) -> set[str]:
    return {row[0] for row in reader.execute("SELECT run_id FROM runs")}


def test_exception_rolls_back_every_write_of_the_block(
    store: SqliteStore, make_run: MakeRun, reader: sqlite3.Connection
) -> None:
    store.insert_run(make_run("before"))
    with pytest.raises(Boom), store.transaction():
        store.insert_run(make_run("r1"))
        store.update_run("before", status="failed", state='{"changed": true}')
        raise Boom
    assert store.get_run("r1") is None
    assert store.get_run("before") == make_run("before")
    assert committed_ids(reader) == {"before"}


def test_block_commits_on_success_and_reads_its_own_writes(
    store: SqliteStore, make_run: MakeRun, reader: sqlite3.Connection
) -> None:
    with store.transaction():
        store.insert_run(make_run("r1"))
        store.update_run("r1", status="completed", state='{"done": true}')
        rec = store.get_run("r1")
        assert rec is not None and rec.status == "completed"
        assert committed_ids(reader) == set()  # not yet visible outside
    assert committed_ids(reader) == {"r1"}


def test_nested_blocks_join_the_outer_one(
    store: SqliteStore, make_run: MakeRun, reader: sqlite3.Connection
) -> None:
    with store.transaction():
        store.insert_run(make_run("outer"))
        with store.transaction():
            store.insert_run(make_run("inner"))
        assert committed_ids(reader) == set()  # the inner end committed nothing
    assert committed_ids(reader) == {"outer", "inner"}

    with pytest.raises(Boom), store.transaction():
        store.insert_run(make_run("outer-2"))
        with store.transaction():
            store.insert_run(make_run("inner-2"))
        raise Boom
    assert committed_ids(reader) == {"outer", "inner"}


def test_inner_failure_swallowed_by_the_outer_block_still_rolls_back(
    store: SqliteStore, make_run: MakeRun, reader: sqlite3.Connection
) -> None:
    with pytest.raises(StoreError, match="rolled back"), store.transaction():
        store.insert_run(make_run("outer"))
        try:
            with store.transaction():
                store.insert_run(make_run("inner"))
                raise Boom
        except Boom:
            pass
        with pytest.raises(StoreError, match="already failed"):
            store.insert_run(make_run("after"))
    assert committed_ids(reader) == set()
    # The store is usable again afterwards.
    with store.transaction():
        store.insert_run(make_run("next"))
    assert committed_ids(reader) == {"next"}


def test_a_caught_duplicate_does_not_spoil_the_transaction(
    store: SqliteStore, make_run: MakeRun, reader: sqlite3.Connection
) -> None:
    store.insert_run(make_run("known"))
    with store.transaction():
        store.insert_run(make_run("new"))
        with pytest.raises(RunExists):
            store.insert_run(make_run("known"))
    assert committed_ids(reader) == {"known", "new"}


def test_transaction_takes_the_write_lock_at_begin(
    store: SqliteStore, state_dir: Path, make_run: MakeRun
) -> None:
    other = sqlite3.connect(state_dir / "state.db", isolation_level=None, timeout=0)
    try:
        with store.transaction():
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            store.insert_run(make_run("r1"))
        other.execute("BEGIN IMMEDIATE")  # free again after the commit
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_long_reader_does_not_block_writes(
    store: SqliteStore, make_run: MakeRun, reader: sqlite3.Connection
) -> None:
    store.insert_run(make_run("r0"))
    reader.execute("BEGIN")
    assert committed_ids(reader) == {"r0"}  # the snapshot starts here

    # Far more than the 1000-page autocheckpoint, which the reader holds up.
    big = '{"pad": "' + "x" * 3000 + '"}'
    for i in range(1, 1500):
        with store.transaction():
            store.insert_run(make_run(f"r{i}", state=big))
            store.update_run(f"r{i}", status="completed", state=big)
    assert committed_ids(reader) == {"r0"}  # still the old snapshot
    reader.execute("COMMIT")
    assert len(committed_ids(reader)) == 1500
    assert store.integrity_check() == "ok"
