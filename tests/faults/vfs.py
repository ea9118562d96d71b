"""Power loss and I/O errors for SQLite: an apsw VFS shim under the real store.

``PowerLossVFS`` passes every call to the default VFS and remembers, per
file, the content at its last ``xSync``: that is what a disk holds after a
power cut.  ``power_loss()`` puts every file back to it (the ``-shm`` file,
shared memory, simply vanishes).  With ``keep_unsynced`` > 0 a seeded random
share of the writes made since the last sync survive as well, in any
combination: the page cache flushed some of them, in no particular order.
``fail`` makes a chosen ``xWrite`` or ``xSync`` return SQLITE_IOERR.

The agent's store talks to Python's ``sqlite3`` module, which apsw cannot
hook, so ``Sqlite3Facade`` makes an apsw connection answer the few
``sqlite3`` calls ``SqliteStore`` makes (execute, executemany, rowcount,
in_transaction, errors with ``sqlite_errorcode``).  The store, the outbox
and the runner above it are the agent's own code, unchanged; the SQLite
library below is apsw's build (same file format, same WAL protocol).
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

IOERR_WRITE = 778  # SQLITE_IOERR_WRITE
IOERR_FSYNC = 1034  # SQLITE_IOERR_FSYNC


@dataclass
class _Track:
    synced: bytes | None  # None: the file did not exist at the last sync
    since: list[tuple[str, int, bytes]] = field(default_factory=list)  # ("w"|"t", at, data)


class PowerLossVFS(apsw.VFS):
    def __init__(self, name: str = "powerloss", *, keep_unsynced: float = 0.0, seed: int = 0):
        super().__init__(name, "")
        self.name = name
        self.keep_unsynced = keep_unsynced
        self.rng = random.Random(seed)
        self.tracks: dict[str, _Track] = {}
        self.fail: Callable[[str, str], int | None] = lambda op, path: None
        self.syncs = 0
        self.writes = 0

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        return _File(self, name, flags)

    def track(self, path: str) -> _Track:
        if path not in self.tracks:
            self.tracks[path] = _Track(Path(path).read_bytes() if os.path.exists(path) else None)
        return self.tracks[path]

    def power_loss(self) -> dict[str, int]:
        """Put every file back to what a disk holds after a power cut; returns bytes kept."""
        kept: dict[str, int] = {}
        for path, track in self.tracks.items():
            if path.endswith("-shm"):
                Path(path).unlink(missing_ok=True)
                continue
            data = bytearray(track.synced or b"")
            survivors = [e for e in track.since if self.rng.random() < self.keep_unsynced]
            for kind, at, chunk in survivors:
                if kind == "t":
                    del data[at:]
                else:
                    if len(data) < at:
                        data.extend(b"\0" * (at - len(data)))
                    data[at : at + len(chunk)] = chunk
            if track.synced is None and not survivors:
                Path(path).unlink(missing_ok=True)
            else:
                Path(path).write_bytes(bytes(data))
            kept[path] = len(data)
        self.tracks.clear()
        return kept


def _ioerror(code: int, message: str) -> apsw.IOError:
    error = apsw.IOError(message)
    error.result, error.extendedresult = code & 0xFF, code  # what SQLite would report
    return error


class _File(apsw.VFSFile):
    def __init__(self, vfs: PowerLossVFS, name: Any, flags: list[int]) -> None:
        self.vfs = vfs
        self.path = name.filename() if hasattr(name, "filename") else str(name)
        vfs.track(self.path)
        super().__init__("", name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        self.vfs.writes += 1
        code = self.vfs.fail("write", self.path)
        if code is not None:
            raise _ioerror(code, f"injected write error on {self.path}")
        super().xWrite(data, offset)
        self.vfs.track(self.path).since.append(("w", offset, bytes(data)))

    def xTruncate(self, size: int) -> None:
        super().xTruncate(size)
        self.vfs.track(self.path).since.append(("t", size, b""))

    def xSync(self, flags: int) -> None:
        code = self.vfs.fail("sync", self.path)
        if code is not None:
            raise _ioerror(code, f"injected fsync error on {self.path}")
        super().xSync(flags)
        self.vfs.syncs += 1
        track = self.vfs.track(self.path)
        track.synced = Path(self.path).read_bytes()
        track.since.clear()


class _Cursor:
    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


def _translate(exc: apsw.Error) -> sqlite3.Error:
    kind = (
        sqlite3.IntegrityError
        if isinstance(exc, apsw.ConstraintError)
        else sqlite3.OperationalError
    )
    error = kind(str(exc))
    error.sqlite_errorcode = getattr(exc, "extendedresult", None) or getattr(exc, "result", 1)  # type: ignore[attr-defined]
    return error


class Sqlite3Facade:
    """An apsw connection seen through the ``sqlite3`` calls ``SqliteStore`` makes."""

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn
        self.text_factory: Any = str  # set and restored by the store; apsw decodes itself

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        try:
            before = self._conn.total_changes()
            rows = [tuple(r) for r in self._conn.execute(sql, tuple(params))]
            return _Cursor(rows, self._conn.total_changes() - before)
        except apsw.Error as exc:
            raise _translate(exc) from exc

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> _Cursor:
        try:
            before = self._conn.total_changes()
            self._conn.executemany(sql, [tuple(p) for p in seq])
            return _Cursor([], self._conn.total_changes() - before)
        except apsw.Error as exc:
            raise _translate(exc) from exc

    @property
    def in_transaction(self) -> bool:
        return not self._conn.get_autocommit()

    def close(self) -> None:
        self._conn.close()


def open_store(state_dir: Path, *, vfs: PowerLossVFS, synchronous: str) -> Any:
    """The agent's ``SqliteStore`` on an existing state directory, through the shim."""
    from agent.store import files
    from agent.store.sqlite import SqliteStore

    path = state_dir / files.DB_NAME
    conn = apsw.Connection(str(path), vfs=vfs.name)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA journal_size_limit = 67108864")  # as agent.store.connection sets it
    # Checkpoints (and so the syncs of synchronous=NORMAL) within small runs.
    conn.execute("PRAGMA wal_autocheckpoint = 64")
    facade = Sqlite3Facade(conn)
    lock = files.acquire_lock(state_dir)
    return SqliteStore(
        conn=facade,  # type: ignore[arg-type]
        path=path,
        lock_fd=lock,
        clock=lambda: 1_800_000_000.0,
        busy_timeout=5.0,
    )
