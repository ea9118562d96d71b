"""Power loss and I/O errors under the agent's store: cases 4 and 6.

The agent's own ``SqliteStore``, ``Outbox`` and ``Runner`` commit real runs
through the apsw VFS shim (vfs.py); a "power cut" puts every file back to
what was fsynced, and the database is then opened again the way the agent
opens it (Python's sqlite3, quick_check at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.connectors.registry import default_registry
from agent.errors import StoreError
from agent.flow.model import parse_flow
from agent.link.dispatch import TimedCatalog
from agent.link.outbox import Outbox, OutboxObserver
from agent.runtime.runner import Runner
from agent.store import files
from agent.store.sqlite import SqliteStore

from .conftest import Record, scale
from .vfs import IOERR_FSYNC, IOERR_WRITE, PowerLossVFS, open_store

COUNT: dict[str, Any] = {
    "format": "flow/v1",
    "id": "count",
    "values": {
        "n": {"type": "number", "access": "input", "default": 0},
        "log": {"type": "string", "access": "output", "default": ""},
    },
    "start": "add",
    "elements": {
        "add": {
            "type": "operator",
            "operations": [{"add": "n", "by": 1}, {"set": "log", "to": "run {{ n }} " + "x" * 600}],
            "next": "done",
        },
        "done": {"type": "end"},
    },
}


def _runner(store: Any) -> Runner:
    outbox = Outbox(store)
    observer = OutboxObserver(outbox, clock=lambda: 1_800_000_000.0)
    catalog = TimedCatalog(store, local=[parse_flow(COUNT)])
    return Runner(
        store=store,
        catalog=catalog,
        connectors=default_registry(),
        observer=observer,
        clock=lambda: 1_800_000_000.0,
    )


def _fresh(state_dir: Path) -> None:
    SqliteStore.open(state_dir).close()  # schema by the real migrations, then closed


def _cut_power(vfs: PowerLossVFS, store: Any) -> dict[str, int]:
    """The machine dies: nothing more reaches the disk, not even the close."""
    vfs.fail = lambda op, path: IOERR_WRITE
    with contextlib.suppress(Exception):  # the close's own checkpoint fails, as it would
        store._conn.close()
    assert store._lock_fd is not None
    files.release_lock(store._lock_fd)
    store._lock_fd = None
    return vfs.power_loss()


def _dies_after(writes: int) -> Callable[[str, str], int | None]:
    left = [writes]

    def fail(op: str, path: str) -> int | None:
        left[0] -= op == "write"
        return IOERR_WRITE if left[0] < 0 else None

    return fail


def _one_round(
    tmp: Path, rng: random.Random, *, mode: str, keep: float, index: int
) -> dict[str, int]:
    state = tmp / f"{mode}-{index}"
    _fresh(state)
    vfs = PowerLossVFS(f"pl-{mode}-{index}", keep_unsynced=keep, seed=rng.randrange(1 << 30))
    apsw_register = vfs  # keep a reference: the VFS lives as long as the object
    store = open_store(state, vfs=vfs, synchronous=mode)
    runner = _runner(store)
    acked: list[str] = []
    target = rng.randint(1, 120)
    tear = rng.random() < 0.5  # the power goes while a commit is being written
    for i in range(target + (1 if tear else 0)):
        if tear and i == target:
            vfs.fail = _dies_after(rng.randint(0, 3))
        run_id = f"r{i:04d}"
        try:
            asyncio.run(runner.start("count", {"n": i}, run_id=run_id))
        except StoreError:
            break
        acked.append(run_id)
    _cut_power(vfs, store)
    del apsw_register

    reopened = SqliteStore.open(state)  # quick_check at start: refuses a damaged file
    try:
        assert reopened.integrity_check() == "ok"
        present = [r.run_id for r in reversed(reopened.list_runs(limit=100_000))]
        outbox = Outbox(reopened)
        seqs = [e.seq for e in outbox.pending(after=0, limit=1_000_000)]
        runs_in_events = {e.run_id for e in outbox.pending(after=0, limit=1_000_000)}
    finally:
        reopened.close()
    # Only acknowledged runs, in the order they were acknowledged, without holes.
    assert present == acked[: len(present)], "a hole or an unacknowledged run survived"
    assert seqs == list(range(1, len(seqs) + 1)), "outbox numbering has a hole"
    assert runs_in_events == set(present), "events and run state diverged"
    assert len(seqs) == 6 * len(present)  # each run's whole step or nothing
    if mode == "full":
        assert present == acked, f"FULL lost acknowledged commits: {len(acked) - len(present)}"
    return {"acked": len(acked), "kept": len(present), "syncs": vfs.syncs}


@pytest.mark.parametrize(
    ("mode", "keep"), [("full", 0.0), ("full", 0.5), ("normal", 0.0), ("normal", 0.5)]
)
def test_04_power_loss(
    tmp_path: Path, rng: random.Random, record: Record, mode: str, keep: float
) -> None:
    """Case 4. Simulated power loss: only synced writes survive (or a random part of the rest).

    Rounds of 1-120 acknowledged runs (each run one commit with its six
    outbox events), half of them cut in the middle of writing the next
    commit, then the power goes (CI 6 rounds per mode, --long 300).  Pass:
    the database always opens (quick_check) and passes integrity_check;
    with ``synchronous=full`` every acknowledged run is there; with
    ``normal`` (the default) only a suffix of them may be missing, never a
    hole, and a run's state and its events are there together or not at all.
    """
    rounds = int(scale(6, 300))
    acked = kept = 0
    for index in range(rounds):
        figures = _one_round(tmp_path, rng, mode=mode, keep=keep, index=index)
        acked += figures["acked"]
        kept += figures["kept"]
    record(
        4,
        sync=mode,
        unsynced_writes_kept=keep,
        rounds=rounds,
        acked_commits=acked,
        lost_commits=acked - kept,
        corrupt=0,
    )


@pytest.mark.parametrize(("op", "code"), [("write", IOERR_WRITE), ("sync", IOERR_FSYNC)])
def test_06_io_error_on_write_or_fsync(tmp_path: Path, record: Record, op: str, code: int) -> None:
    """Case 6. An I/O error on a write or an fsync, from the VFS shim.

    Pass: the commit fails with a StoreError that names the database file,
    the step is rolled back (no run, no events), earlier commits are intact,
    and once the disk behaves the same store retries and goes on.
    """
    state = tmp_path / "state"
    _fresh(state)
    vfs = PowerLossVFS(f"io-{op}")
    store = open_store(state, vfs=vfs, synchronous="full")
    runner = _runner(store)
    try:
        asyncio.run(runner.start("count", {"n": 1}, run_id="before"))
        vfs.fail = lambda what, path: code if what == op and path.endswith("-wal") else None
        with pytest.raises(StoreError) as failed:
            asyncio.run(runner.start("count", {"n": 2}, run_id="failing"))
        message = str(failed.value)
        assert str(state / "state.db") in message
        assert "I/O error" in message
        assert store.get_run("failing") is None
        assert [e.run_id for e in Outbox(store).pending(after=0)] == ["before"] * 6
        vfs.fail = lambda what, path: None
        asyncio.run(runner.start("count", {"n": 2}, run_id="failing"))  # the retry
        assert store.get_run("failing") is not None
        assert store.integrity_check() == "ok"
    finally:
        store.close()
    with SqliteStore.open(state) as again:
        assert [r.run_id for r in reversed(again.list_runs())] == ["before", "failing"]
    record(6, fault=op, error=message.split(":", 1)[0] + ": ... I/O error on <state.db> ...")
