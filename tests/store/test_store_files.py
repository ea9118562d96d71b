"""The state directory on disk: modes, the lock, a damaged database."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import FakeClock, MakeRun, Spawn

from agent.errors import StateDirLocked, StoreCorrupt
from agent.store import FlowRecord, SqliteStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def write_some(store: SqliteStore, make_run: MakeRun, count: int = 3) -> None:
    for i in range(count):
        store.insert_run(make_run(f"r{i}"))


@pytest.mark.parametrize("umask", ["default", "permissive"])
def test_new_state_dir_and_files_are_private(
    request: pytest.FixtureRequest, state_dir: Path, make_run: MakeRun, umask: str
) -> None:
    if umask == "permissive":
        request.getfixturevalue("permissive_umask")
    store = SqliteStore.open(state_dir)
    write_some(store, make_run)  # makes SQLite create its -wal and -shm files
    try:
        assert mode(state_dir) == 0o700
        for name in ("state.db", "state.db-wal", "state.db-shm", "agent.lock"):
            assert mode(state_dir / name) == 0o600, name
    finally:
        store.close()


def test_existing_loose_dir_and_files_are_tightened(state_dir: Path, make_run: MakeRun) -> None:
    SqliteStore.open(state_dir).close()
    os.chmod(state_dir, 0o755)
    os.chmod(state_dir / "state.db", 0o644)
    os.chmod(state_dir / "agent.lock", 0o666)
    with SqliteStore.open(state_dir) as store:
        write_some(store, make_run)
        assert mode(state_dir) == 0o700
        assert mode(state_dir / "state.db") == 0o600
        assert mode(state_dir / "state.db-wal") == 0o600
        assert mode(state_dir / "agent.lock") == 0o600


def test_second_open_in_same_process_is_refused_until_close(state_dir: Path) -> None:
    first = SqliteStore.open(state_dir)
    with pytest.raises(StateDirLocked) as caught:
        SqliteStore.open(state_dir)
    assert str(state_dir) in str(caught.value)
    assert f"pid {os.getpid()}" in str(caught.value)
    first.close()
    SqliteStore.open(state_dir).close()


def test_store_held_by_another_process_is_refused_with_its_pid(
    state_dir: Path, spawn: Spawn
) -> None:
    holder = spawn("hold", str(state_dir), "1")
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "ready"

    with pytest.raises(StateDirLocked) as caught:
        SqliteStore.open(state_dir)
    message = str(caught.value)
    assert message == (
        f"state directory {state_dir} is in use by another flow-agent process "
        f"(pid {holder.pid}); stop it or use another --state-dir"
    )


def test_lock_is_freed_when_the_holder_is_killed(state_dir: Path, spawn: Spawn) -> None:
    holder = spawn("hold", str(state_dir), "5")
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "ready"
    with pytest.raises(StateDirLocked):
        SqliteStore.open(state_dir)

    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL

    with SqliteStore.open(state_dir) as store:
        # What the killed process committed is all there.
        assert {r.run_id for r in store.list_runs()} == {f"held-{i}" for i in range(5)}
        assert store.integrity_check() == "ok"


def test_other_process_is_refused_while_we_hold_the_lock(state_dir: Path, spawn: Spawn) -> None:
    with SqliteStore.open(state_dir):
        child = spawn("open", str(state_dir))
        _, err = child.communicate(timeout=60)
        assert child.returncode == 3
        assert f"in use by another flow-agent process (pid {os.getpid()})" in err
    child = spawn("open", str(state_dir))
    child.communicate(timeout=60)
    assert child.returncode == 0


def page_size_and_root(db: Path, table: str) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))
        return page_size, root.fetchone()[0]
    finally:
        conn.close()


def flip_page_bytes(db: Path, page_size: int, page: int) -> None:
    # Inverts the b-tree page header and the cell pointers after it.
    with db.open("r+b") as f:
        f.seek((page - 1) * page_size)
        data = f.read(64)
        f.seek((page - 1) * page_size)
        f.write(bytes(b ^ 0xFF for b in data))


def test_damaged_page_is_detected_moved_aside_and_not_recreated(
    state_dir: Path, make_run: MakeRun, clock: FakeClock
) -> None:
    with SqliteStore.open(state_dir) as store:
        for i in range(200):
            store.insert_run(make_run(f"r{i}", state='{"pad": "' + "x" * 200 + '"}'))
    db = state_dir / "state.db"
    assert not (state_dir / "state.db-wal").exists()  # closing checkpointed it
    page_size, root = page_size_and_root(db, "runs")
    flip_page_bytes(db, page_size, root)
    damaged = db.read_bytes()

    clock.now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    with pytest.raises(StoreCorrupt) as caught:
        SqliteStore.open(state_dir, clock=clock)
    aside = state_dir / "state.db.corrupt-20231114T221320Z"
    message = str(caught.value)
    assert f"{db} failed its integrity check" in message
    assert f"moved to {aside}" in message
    assert "nothing was recreated" in message
    assert "next start creates a new, empty state database" in message
    assert not db.exists()  # refused, not silently replaced
    assert aside.read_bytes() == damaged

    # The lock was released, and the next open starts afresh as it said.
    with SqliteStore.open(state_dir) as store:
        assert store.list_runs() == []
        assert store.integrity_check() == "ok"


def test_damaged_db_moves_aside_with_its_wal(
    state_dir: Path, spawn: Spawn, clock: FakeClock
) -> None:
    with SqliteStore.open(state_dir) as store:
        store.put_flow(
            FlowRecord(
                flow_id="demo",
                version=1,
                definition="{}",
                sha256="0" * 64,
                active=True,
                signature=None,
                received_at=1.0,
            )
        )
    # A killed writer leaves its WAL behind; it holds runs pages only.
    holder = spawn("hold", str(state_dir), "3")
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "ready"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    wal = (state_dir / "state.db-wal").read_bytes()
    assert wal

    db = state_dir / "state.db"
    page_size, root = page_size_and_root(db, "flows")
    flip_page_bytes(db, page_size, root)
    with pytest.raises(StoreCorrupt) as caught:
        SqliteStore.open(state_dir, clock=clock)
    aside = state_dir / "state.db.corrupt-20231114T221320Z"
    assert str(aside) in str(caught.value)
    assert Path(f"{aside}-wal").read_bytes() == wal
    assert not (state_dir / "state.db-wal").exists()
    assert not (state_dir / "state.db-shm").exists()


def test_file_that_is_not_a_database_is_moved_aside(state_dir: Path, clock: FakeClock) -> None:
    SqliteStore.open(state_dir).close()
    db = state_dir / "state.db"
    with db.open("r+b") as f:
        f.write(b"this is no SQLite header")
    with pytest.raises(StoreCorrupt) as caught:
        SqliteStore.open(state_dir, clock=clock)
    assert "moved to" in str(caught.value)
    assert not db.exists()
    assert len(list(state_dir.glob("state.db.corrupt-*"))) == 1
