"""Opening the SQLite file: settings, the check at start, error translation.

Every ``sqlite3`` error leaves the store through ``translate``, which names
the file and says what a person can do about it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from agent.errors import ConfigError, StoreCorrupt, StoreError
from agent.store import files

SYNC_LEVELS = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}
_WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL is trimmed to after a reset

# Primary SQLite result codes (extended codes carry them in the low byte).
BUSY, LOCKED, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB = (
    5, 6, 8, 10, 11, 13, 14, 26
)  # fmt: skip
CONSTRAINT_PRIMARYKEY = 1555


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def translate(exc: sqlite3.Error, *, doing: str, path: Path, busy_timeout: float) -> StoreError:
    """Turn a sqlite3 exception into a StoreError a person can act on."""
    code = primary_code(exc)
    if code == FULL:
        return StoreError(
            f"cannot {doing}: the disk holding {path} is full ({exc})",
            hint="free disk space; the database is intact and the operation can be retried",
        )
    if code == IOERR:
        return StoreError(
            f"cannot {doing}: I/O error on {path} ({exc})",
            hint="check the disk and the file system; the transaction was rolled back",
        )
    if code == READONLY:
        return StoreError(
            f"cannot {doing}: {path} is read-only ({exc})",
            hint="check the file's owner and mode and that the file system is mounted read-write",
        )
    if code in (BUSY, LOCKED):
        return StoreError(
            f"cannot {doing}: {path} stayed locked by another connection "
            f"for more than {busy_timeout:g} s ({exc})",
            hint="find the other program holding a write transaction on it",
        )
    if code in (CORRUPT, NOTADB):
        return StoreCorrupt(
            f"cannot {doing}: {path} is damaged ({exc})",
            hint="restart flow-agent: the check at start moves a damaged database aside",
        )
    if code == CANTOPEN:
        return StoreError(
            f"cannot {doing}: cannot open {path} ({exc})",
            hint="check that the state directory exists and is writable by this user",
        )
    return StoreError(f"cannot {doing} in {path}: {exc}")


def sync_level(value: str) -> str:
    level = SYNC_LEVELS.get(value.lower())
    if level is None:
        raise ConfigError(
            f"unknown synchronous level {value!r}",
            hint="use one of: " + ", ".join(SYNC_LEVELS),
        )
    return level


def connect(
    path: Path, *, level: str, busy_timeout: float, clock: Callable[[], float]
) -> sqlite3.Connection:
    """Quick-check the database, then open and configure the writer's connection.

    A damaged database is moved aside and ``StoreCorrupt`` raised.
    """
    problem = _quick_check(path, busy_timeout=busy_timeout)
    if problem is not None:
        aside = files.move_aside(path, clock=clock)
        raise StoreCorrupt(
            f"{path} failed its integrity check ({problem}). It was moved to {aside} "
            "(with its -wal/-shm files, if any); nothing was recreated in its place. "
            "The next start creates a new, empty state database: runs and flows stored "
            "in the damaged file are not in it.",
            hint=f"to keep the old data, restore a backup to {path} before starting again; "
            f"keep {aside} for recovery or support",
        )
    try:
        # isolation_level=None: no implicit BEGIN; transactions are ours.
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise translate(exc, doing="open", path=path, busy_timeout=busy_timeout) from exc
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"cannot use write-ahead logging for {path} (journal mode stays {mode})",
                hint="put the state directory on a local file system",
            )
        conn.execute(f"PRAGMA synchronous = {level}")
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT:d}")
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise translate(exc, doing="open", path=path, busy_timeout=busy_timeout) from exc
        raise
    return conn


def connect_readonly(
    path: Path, *, busy_timeout: float, schema: int | None = None
) -> sqlite3.Connection:
    """A connection that cannot write, for reading next to the writer (WAL allows it).

    With ``schema``, a database whose schema is older than that is refused:
    a reader cannot bring it up to date.
    """
    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise translate(exc, doing="open", path=path, busy_timeout=busy_timeout) from exc
    if schema is None:
        return conn
    try:
        (found,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise translate(exc, doing="read", path=path, busy_timeout=busy_timeout) from exc
    if found < schema:
        conn.close()
        raise StoreError(
            f"{path} has schema version {found}; this flow-agent reads {schema}",
            hint="open it once with this flow-agent (flow-agent run, or exec/resume with this"
            " --state-dir), which brings it up to date",
        )
    return conn


def _quick_check(path: Path, *, busy_timeout: float) -> str | None:
    """``None`` when the database passes ``quick_check``, else the problem.

    Checked through a read-only connection: closing a read-write one would
    checkpoint the WAL into a damaged file and delete the WAL, destroying
    what a person may need to recover data.
    """
    conn = connect_readonly(path, busy_timeout=busy_timeout)
    # A damaged page can put bytes that are not UTF-8 into quick_check's report.
    conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
    try:
        rows = conn.execute("PRAGMA quick_check(20)").fetchall()
    except sqlite3.Error as exc:
        if primary_code(exc) in (CORRUPT, NOTADB):
            return str(exc)
        raise translate(exc, doing="check", path=path, busy_timeout=busy_timeout) from exc
    except UnicodeDecodeError as exc:
        # SQLite's own error message quoted damaged bytes (a broken schema entry).
        return f"text in the database is not UTF-8 ({exc.reason} at byte {exc.start})"
    finally:
        conn.close()
    if [row[0] for row in rows] == ["ok"]:
        return None
    return "; ".join(str(row[0]) for row in rows)
