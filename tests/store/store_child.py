"""A second process for the store tests: ``python store_child.py MODE ARGS``.

Modes:
  hold DIR N        open the store, commit N runs, print "ready", wait on stdin
  open DIR          try to open the store; exit 3 with the message on stderr
                    when the directory is locked, 0 when it opened
  migrate-hang DB   run migration 1 on DB, then hang inside its transaction
  diskfull DIR      fill a small file system under DIR; print a JSON report
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from sqlite_utils import Database

from agent.errors import StateDirLocked, StoreError
from agent.store import RunRecord, SqliteStore
from agent.store.migrations import MIGRATIONS, apply_migrations


def _run(run_id: str, state: str, *, now: float = 1000.0) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        flow_id="demo",
        version=1,
        status="running",
        parent_id=None,
        created_at=now,
        updated_at=now,
        state=state,
    )


def hold(state_dir: Path, count: int) -> None:
    store = SqliteStore.open(state_dir)
    for i in range(count):
        store.insert_run(_run(f"held-{i}", json.dumps({"i": i})))
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin or kills us
    store.close()


def try_open(state_dir: Path) -> int:
    try:
        store = SqliteStore.open(state_dir)
    except StateDirLocked as exc:
        print(exc, file=sys.stderr)
        return 3
    store.close()
    return 0


def migrate_hang(db_path: Path) -> None:
    def first_then_hang(db: Database) -> None:
        MIGRATIONS[0](db)
        print("inside", flush=True)
        time.sleep(120)  # the parent kills us here

    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    apply_migrations(Database(conn), path=str(db_path), migrations=[first_then_hang])


def disk_full(mount: Path) -> dict[str, object]:
    """Runs on a small tmpfs: fill it, check the damage, free space, go on."""
    store = SqliteStore.open(mount / "state")
    # A file to delete later, standing for space an operator frees.
    (mount / "filler").write_bytes(b"\0" * (96 * 1024))
    state = json.dumps({"blob": "x" * 6000})
    committed: list[str] = []
    error = ""
    for i in range(1000):
        run_id = f"r{i}"
        try:
            with store.transaction():
                store.insert_run(_run(run_id, state))
                store.update_run(run_id, status="completed", state=state)
        except StoreError as exc:
            error = str(exc)
            break
        committed.append(run_id)
    report: dict[str, object] = {
        "committed": len(committed),
        "error": error,
        "failed_run_stored": store.get_run(f"r{len(committed)}") is not None,
        "integrity": store.integrity_check(),
        "intact": all(
            (rec := store.get_run(run_id)) is not None
            and rec.state == state
            and rec.status == "completed"
            for run_id in committed
        ),
    }
    os.unlink(mount / "filler")
    store.insert_run(_run("after-space-returned", state))
    store.close()
    store = SqliteStore.open(mount / "state")  # the check at start passes too
    report["after_reopen"] = len(store.list_runs(limit=10_000))
    report["integrity_after_reopen"] = store.integrity_check()
    store.close()
    return report


def main() -> int:
    mode, arg = sys.argv[1], Path(sys.argv[2])
    if mode == "hold":
        hold(arg, int(sys.argv[3]))
    elif mode == "open":
        return try_open(arg)
    elif mode == "migrate-hang":
        migrate_hang(arg)
    elif mode == "diskfull":
        print(json.dumps(disk_full(arg)), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
