"""Schema migrations and ``user_version``."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database
from store_helpers import MakeRun, Spawn

from agent.errors import StoreError
from agent.store import SqliteStore
from agent.store.migrations import MIGRATIONS, SchemaTooNew, apply_migrations


def read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows}


@pytest.fixture
def raw_db(tmp_path: Path) -> Iterator[Database]:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    yield Database(conn)
    conn.close()


def test_fresh_store_is_at_the_latest_schema(state_dir: Path, store: SqliteStore) -> None:
    conn = read_only(state_dir / "state.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert {"runs", "flows", "meta"} <= tables(conn)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_reopening_keeps_data_and_runs_no_migration_twice(
    state_dir: Path, make_run: MakeRun
) -> None:
    with SqliteStore.open(state_dir) as store:
        store.insert_run(make_run("r1"))
        store.set_meta("agent_id", "a-1")
    with SqliteStore.open(state_dir) as store:
        assert store.get_run("r1") == make_run("r1")
        assert store.get_meta("agent_id") == "a-1"


def test_migrations_apply_in_order_and_bump_user_version(raw_db: Database) -> None:
    db = raw_db
    seen: list[int] = []

    def second(d: Database) -> None:
        seen.append(d.conn.execute("PRAGMA user_version").fetchone()[0])
        d.create_table("extra", {"id": int}, pk="id")

    assert apply_migrations(db, path="x.db", migrations=[MIGRATIONS[0], second]) == 2
    assert seen == [1]  # ran after the first one was committed
    assert {"runs", "extra"} <= tables(db.conn)
    # Applying again is a no-op.
    assert apply_migrations(db, path="x.db", migrations=[MIGRATIONS[0], second]) == 2
    assert seen == [1]


def test_failing_migration_rolls_back_with_its_version(raw_db: Database) -> None:
    db = raw_db

    def broken(d: Database) -> None:
        d.create_table("half", {"id": int}, pk="id")
        raise RuntimeError("migration bug")

    with pytest.raises(RuntimeError):
        apply_migrations(db, path="x.db", migrations=[MIGRATIONS[0], broken])
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "half" not in tables(db.conn)
    assert not db.conn.in_transaction


def test_newer_schema_is_refused_and_left_alone(state_dir: Path) -> None:
    SqliteStore.open(state_dir).close()
    conn = sqlite3.connect(state_dir / "state.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()

    with pytest.raises(SchemaTooNew) as caught:
        SqliteStore.open(state_dir)
    assert isinstance(caught.value, StoreError)
    message = str(caught.value)
    assert str(state_dir / "state.db") in message
    assert "schema version 99" in message
    assert f"up to {len(MIGRATIONS)}" in message
    assert "newer flow-agent" in message
    # Untouched, and the lock was released (a second try fails the same way).
    conn = read_only(state_dir / "state.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
    conn.close()
    with pytest.raises(SchemaTooNew):
        SqliteStore.open(state_dir)


def test_sigkill_inside_a_migration_rolls_it_back(tmp_path: Path, spawn: Spawn) -> None:
    db_path = tmp_path / "state" / "state.db"
    db_path.parent.mkdir(mode=0o700)
    child = spawn("migrate-hang", str(db_path))
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "inside"  # tables created, not committed
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)

    conn = read_only(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert tables(conn) == set()
    conn.close()

    # The next start applies it completely.
    with SqliteStore.open(db_path.parent) as store:
        assert store.integrity_check() == "ok"
    conn = read_only(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert {"runs", "flows", "meta"} <= tables(conn)
    conn.close()
