"""Faults: a full disk, the sync setting, and how SQLite errors reach people."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from store_helpers import MakeRun, Spawn

from agent.errors import ConfigError, StoreError
from agent.store import SqliteStore
from agent.store.connection import translate

BIG = '{"blob": "' + "x" * 9000 + '"}'  # spills into overflow pages


def can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs root and unshare -m for a tmpfs")
def test_full_tmpfs_gives_a_clear_error_and_no_damage(tmp_path: Path, spawn: Spawn) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    # The tmpfs lives in the child's private mount namespace and dies with it.
    script = f'mount -t tmpfs -o size=512k,mode=0700 tmpfs {shlex.quote(str(mount))} && exec "$@"'
    unshare = ("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh")
    child = spawn("diskfull", str(mount), prefix=unshare)
    out, err = child.communicate(timeout=90)
    assert child.returncode == 0, err
    report = json.loads(out)

    assert report["committed"] > 0
    error = report["error"]
    assert "is full" in error
    assert str(mount / "state" / "state.db") in error
    assert report["failed_run_stored"] is False
    assert report["integrity"] == "ok"
    assert report["intact"] is True
    # After space was freed, writing went on, and the check at start passed.
    assert report["after_reopen"] == report["committed"] + 1
    assert report["integrity_after_reopen"] == "ok"


def test_page_limit_full_rolls_back_the_block_and_keeps_earlier_data(
    store: SqliteStore, make_run: MakeRun
) -> None:
    for i in range(5):
        store.insert_run(make_run(f"early-{i}", state=BIG))
    # SQLITE_FULL without a small file system: cap the database's page count.
    conn = store._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 8}")

    failed_at = None
    for i in range(50):
        try:
            with store.transaction():
                store.insert_run(make_run(f"small-{i}"))
                store.insert_run(make_run(f"big-{i}", state=BIG))
        except StoreError as exc:
            assert "is full" in str(exc)
            assert str(store.path) in str(exc)
            assert isinstance(exc.__cause__, sqlite3.Error)
            failed_at = i
            break
    assert failed_at is not None
    assert store.get_run(f"small-{failed_at}") is None  # the whole block rolled back
    assert store.get_run(f"big-{failed_at}") is None
    assert store.integrity_check() == "ok"
    for i in range(5):
        rec = store.get_run(f"early-{i}")
        assert rec is not None and rec.state == BIG
    for i in range(failed_at):
        assert store.get_run(f"big-{i}") is not None

    conn.execute("PRAGMA max_page_count = 1073741823")  # the space comes back
    store.insert_run(make_run("after", state=BIG))
    assert store.get_run("after") is not None


@pytest.mark.parametrize(
    ("setting", "level"), [("off", 0), ("normal", 1), ("FULL", 2), ("extra", 3)]
)
def test_synchronous_setting_is_applied(state_dir: Path, setting: str, level: int) -> None:
    with SqliteStore.open(state_dir, synchronous=setting) as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == level


def test_unknown_synchronous_setting_is_refused_before_touching_disk(state_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown synchronous level 'sometimes'"):
        SqliteStore.open(state_dir, synchronous="sometimes")
    assert not state_dir.exists()


def test_read_only_error_names_the_file(store: SqliteStore, state_dir: Path) -> None:
    db = state_dir / "state.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.Error) as caught:
            conn.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
    finally:
        conn.close()
    error = translate(caught.value, doing="store k", path=db, busy_timeout=5.0)
    assert isinstance(error, StoreError)
    assert str(error).startswith(f"cannot store k: {db} is read-only")
    assert "hint:" in str(error)


def test_unwritable_state_dir_is_a_store_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(StoreError, match="cannot prepare state directory"):
        SqliteStore.open(not_a_dir / "state")
