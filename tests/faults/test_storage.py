"""The state directory under faults: cases 5 (disk full), 7 (corruption), 9 (readers).

Case 5 runs the real daemon on a small tmpfs in a private mount namespace;
the test reaches that file system through ``/proc/PID/root``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import StoreCorrupt, StoreError
from agent.store.sqlite import SqliteStore

from .conftest import Record, scale
from .harness import ROOT, ControlPlaneThread, Daemon, Sink, charge_flow, wait_for
from .test_power import _runner


def _can_unshare() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "a tmpfs in a private mount namespace needs root and unshare"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return None if probe.returncode == 0 else "unshare -m is not permitted here"


NO_TMPFS = _can_unshare()


def _runs_with(cp: ControlPlaneThread, status: str, ids: list[str]) -> int:
    marks = ",".join("?" * len(ids))
    sql = f"SELECT count(*) FROM runs WHERE status = ? AND id IN ({marks})"
    return int(cp.read(sql, [status, *ids])[0][0])


@pytest.mark.skipif(NO_TMPFS is not None, reason=str(NO_TMPFS))
def test_05_disk_full(
    tmp_path: Path,
    cp: ControlPlaneThread,
    sink: Sink,
    daemons: Callable[..., Daemon],
    record: Record,
) -> None:
    """Case 5. Disk full: the daemon's state directory on an 8 MiB tmpfs, filled up to 64 KiB.

    Runs with large inputs are dispatched until the store cannot grow.
    Pass: a clear error naming the full disk and the database; no new work
    (runs are refused, not half-started); the daemon stays up; no corruption
    (integrity_check ok); once space returns, new runs are accepted and
    complete, and every run that was accepted completed.
    """
    mount = tmp_path / "small"
    mount.mkdir()
    script = f'mount -t tmpfs -o size=8m,mode=0700 tmpfs {shlex.quote(str(mount))} && exec "$@"'
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
    cp.publish(charge_flow(sink.url, pause=0.01))
    daemon = daemons(prefix=prefix)
    daemon.state_dir = mount / "state"
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
    # The kernel follows /proc/PID/root into the daemon's mount namespace; SQLite,
    # which resolves symbolic links itself, does not: queries go through nsenter.
    seen = Path(f"/proc/{daemon.pid}/root") / mount.relative_to("/")

    def query(sql: str) -> list[list[object]]:
        return _ns_rows(daemon.pid, mount / "state" / "state.db", sql)

    wait_for(lambda: (seen / "state" / "identity.json").exists(), "pairing", timeout=60)
    agent_id = json.loads((seen / "state" / "identity.json").read_text())["agent_id"]
    wait_for(lambda: cp.online(agent_id), "the agent on the tmpfs to connect", timeout=60)
    wait_for(lambda: query("SELECT count(*) FROM flows") == [[1]], "the flow to sync")
    stat = os.statvfs(seen)
    (seen / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 64 * 1024))
    big = "y" * 30_000
    accepted: list[str] = []
    refused = 0
    for _ in range(60):
        run_id = cp.dispatch("charge", inputs={"amount": 1, "note": big})
        if run_id is None:
            continue
        wait_for(lambda r=run_id: _runs_with(cp, "dispatched", [r]) == 0, "the agent's answer")
        if _runs_with(cp, "refused", [run_id]):
            refused += 1
            if refused >= 3:
                break
        else:
            accepted.append(run_id)
    log = daemon.log_text()
    assert refused >= 3, "the disk never filled up"
    assert daemon.alive(), "the daemon died of a full disk"
    assert "is full" in log and str(mount / "state" / "state.db") in log
    assert "Traceback" not in log
    assert query("PRAGMA integrity_check") == [["ok"]]
    (seen / "filler").unlink()  # the space comes back
    after = [cp.dispatch("charge") for _ in range(3)]
    assert None not in after
    done = [r for r in [*accepted, *after] if r is not None]
    wait_for(
        lambda: _runs_with(cp, "completed", done) == len(done),
        "runs after space returned",
        timeout=90,
    )
    assert query("PRAGMA integrity_check") == [["ok"]]
    assert daemon.terminate() == 0
    record(
        5,
        accepted_before_full=len(accepted),
        refused_while_full=refused,
        completed_after=len(after),
        integrity="ok",
    )


NS_QUERY = """
import json, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
print(json.dumps([list(r) for r in conn.execute(sys.argv[2])]))
"""


def _ns_rows(pid: int, db: Path, sql: str) -> list[list[object]]:
    """Rows read inside the mount namespace of process ``pid``."""
    command = ["nsenter", "-t", str(pid), "-m", sys.executable, "-c", NS_QUERY, str(db), sql]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30)
    rows: list[list[object]] = json.loads(out.stdout)
    return rows


def _flip(path: Path, offsets: list[int], rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    for at in offsets:
        data[at] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


def _populated(state: Path) -> int:
    store = SqliteStore.open(state, synchronous="full")
    runner = _runner(store)
    for i in range(40):
        asyncio.run(runner.start("count", {"n": i}, run_id=f"r{i}"))
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return int(pages)


def test_07_corrupted_database_at_start(tmp_path: Path, rng: random.Random, record: Record) -> None:
    """Case 7. Flipped bytes in the database before the agent starts.

    Flips land in b-tree page headers (CI 12 rounds, --long 200): the check
    at start must find them.  Then flips anywhere (data bytes included):
    the store refuses cleanly (StoreCorrupt, the file moved aside) or opens,
    never anything else (no other exception, no traceback); what opened is
    counted when only the full integrity_check sees the damage (a flipped
    byte in an index entry or a value: quick_check does not compare indexes
    with their tables).
    Pass: detected, the file moved aside with a clear refusal naming both
    paths, nothing recreated in its place.
    """
    rounds = int(scale(12, 200))
    template = tmp_path / "template"
    pages = _populated(template)
    page = 4096
    refused = opened = silent = 0
    for i in range(rounds):
        state = tmp_path / f"s{i}"
        shutil.copytree(template, state)
        db = state / "state.db"
        if i % 2 == 0:
            hit = rng.randrange(2, pages + 1)  # a b-tree page's 8-12 byte header
            offsets = [(hit - 1) * page + rng.randrange(0, 8)]
        else:
            offsets = [rng.randrange(0, 16)]  # the file's magic string
        _flip(db, offsets, rng)
        with pytest.raises(StoreCorrupt) as refusal:
            SqliteStore.open(state)
        message = str(refusal.value)
        assert "failed its integrity check" in message and "moved to" in message
        assert not db.exists(), "a damaged database must not be recreated silently"
        assert any(p.name.startswith("state.db.corrupt-") for p in state.iterdir())
        refused += 1
    for i in range(rounds):
        state = tmp_path / f"a{i}"
        shutil.copytree(template, state)
        size = (state / "state.db").stat().st_size
        _flip(state / "state.db", [rng.randrange(0, size) for _ in range(rng.randint(1, 8))], rng)
        try:
            store = SqliteStore.open(state)
        except StoreError:
            refused += 1
            continue
        try:
            # quick_check does not compare indexes with their tables, nor read
            # values: such damage opens, and the full check (or a read) finds it.
            store.list_runs(limit=1000)
            silent += store.integrity_check() != "ok"
        except StoreError:
            silent += 1
        finally:
            store.close()
        opened += 1
    record(
        7,
        header_flips_detected=rounds,
        random_flips_refused=refused - rounds,
        random_flips_opened=opened,
        of_which_only_integrity_check_sees=silent,
    )


def test_07_the_daemon_refuses_a_corrupted_database(
    cp: ControlPlaneThread, daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Case 7, the daemon: ``flow-agent run`` on a damaged database refuses clearly."""
    daemon = daemons()
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
    wait_for(daemon.connected, "the agent to connect", timeout=60)
    assert daemon.terminate() == 0
    db = daemon.state_dir / "state.db"
    _flip(db, [4096 + 3], random.Random(7))  # page 2's header: cell count
    code = daemon.start().proc.wait(60)  # type: ignore[union-attr]
    log = daemon.log_text().split("--- start 2", 1)[1]
    assert code != 0
    assert "failed its integrity check" in log and "moved to" in log
    assert "Traceback" not in log
    assert not db.exists()


READER = """
import sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, isolation_level=None)
conn.execute("BEGIN")
print(conn.execute("SELECT count(*) FROM runs").fetchone()[0], flush=True)
sys.stdin.read()
"""


def test_09_long_reader_and_busy_writer(tmp_path: Path, record: Record) -> None:
    """Case 9. A reader holds one read transaction open while the agent commits.

    Another process keeps a snapshot (as a backup or a shell would) through
    a first batch of commits; status readers poll all along.  Pass: no
    "database is locked" failure (every commit succeeds), and the WAL stays
    bounded: once the reader lets go, a second batch as large as the first
    does not grow the WAL file further (beyond the one commit that met the
    reader's end).
    """
    batch = int(scale(600, 3000))
    state = tmp_path / "state"
    store = SqliteStore.open(state)
    runner = _runner(store)
    wal = state / "state.db-wal"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(state / "state.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None
    reader.stdout.readline()
    polls = 0
    started = time.monotonic()
    try:
        for i in range(batch):
            asyncio.run(runner.start("count", {"n": i}, run_id=f"a{i}"))
            if i % 50 == 0:
                conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5)
                conn.execute("SELECT count(*) FROM runs").fetchone()
                conn.close()
                polls += 1
        held = wal.stat().st_size
    finally:
        reader.communicate("", timeout=30)
    for i in range(batch):
        asyncio.run(runner.start("count", {"n": i}, run_id=f"b{i}"))
    after = wal.stat().st_size
    store.close()
    # The commit that meets the finished reader still appends; the checkpoint after it
    # completes and the WAL restarts from its beginning: no growth beyond that.
    assert after <= held + 2**20, f"the WAL grew from {held} to {after} after the reader let go"
    record(
        9,
        commits=2 * batch,
        wal_while_reading_kib=held // 1024,
        wal_after_kib=after // 1024,
        status_polls=polls,
        seconds=round(time.monotonic() - started, 1),
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(f"run with pytest from {ROOT}")


def test_07_damaged_text_in_the_schema_is_refused_not_a_crash(tmp_path: Path) -> None:
    """Case 7, regression: damage that puts bytes which are not UTF-8 into SQLite's
    own error message (a schema entry's name) once escaped the check at start as a
    UnicodeDecodeError with a traceback.

    Pass: refused as damaged, moved aside, like any other damage.
    """
    state = tmp_path / "state"
    SqliteStore.open(state).close()
    conn = sqlite3.connect(state / "state.db")
    with conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET name = CAST(X'6DC5C5' AS TEXT),"
            " sql = 'CREATE TABLE broken (' WHERE name = 'meta'"
        )
    conn.close()
    with pytest.raises(StoreCorrupt) as refusal:
        SqliteStore.open(state)
    assert "not UTF-8" in str(refusal.value) and "moved to" in str(refusal.value)
    assert not (state / "state.db").exists()
