"""The store on SQLite: one file, one writer, explicit transactions.

``SqliteStore.open(state_dir)`` locks the state directory, checks the
database and brings its schema up to date; then the runner, the only writer,
calls it synchronously.  The hot calls (``insert_run``, ``update_run``,
``transaction``) go straight to prepared statements on the ``sqlite3``
connection; sqlite-utils is used for the schema (see ``migrations``).

Durability: ``synchronous``
---------------------------
The database runs in WAL mode.  The setting picks when SQLite calls fsync:

* ``normal`` (default): the WAL is synced at checkpoints, not at every
  commit.  A killed *process* loses nothing that was committed; a *power loss*
  or kernel crash may lose the last commits before it (a suffix, never a
  hole), but the database is never corrupted.  This is what makes thousands of
  durable runs per second possible on ordinary disks.
* ``full``: the WAL is synced at every commit, so every acknowledged commit
  survives power loss too, at the price of one fsync per transaction.
* ``extra``: ``full`` plus a directory sync when the WAL is reset; for file
  systems that need it.
* ``off``: no fsync at all; a power loss may corrupt the database.  Only for
  throwaway state (tests, ``exec`` in a temporary directory).

Readers: a second connection (say a read-only one for the API, or the
``sqlite3`` shell) may hold a read transaction as long as it likes; in WAL
mode that never blocks this writer.  It only keeps the WAL from being reset
until the reader finishes, so ``journal_size_limit`` trims the file back
afterwards.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from agent.errors import StoreError
from agent.store import files
from agent.store.base import (
    RUN_STATUSES,
    FlowConflict,
    FlowRecord,
    RunExists,
    RunRecord,
    UnknownFlow,
    UnknownRun,
    check_status,
)
from agent.store.connection import (
    CONSTRAINT_PRIMARYKEY,
    CORRUPT,
    NOTADB,
    connect,
    connect_readonly,
    primary_code,
    sync_level,
    translate,
)
from agent.store.migrations import MIGRATIONS, apply_migrations, schema_version

if TYPE_CHECKING:
    from agent.store.base import Store

_RUN_COLUMNS = "run_id, flow_id, version, status, parent_id, created_at, updated_at, wake_at, state"
_INSERT_RUN = f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_RUN = "UPDATE runs SET status = ?, state = ?, wake_at = ?, updated_at = ? WHERE run_id = ?"
_GET_RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?"
_FLOW_COLUMNS = "flow_id, version, definition, sha256, active, signature, received_at"

_RunRow = tuple[str, str, int, str, str | None, float, float, float | None, str]
_FlowRow = tuple[str, int, str, str, int, str | None, float]


def _run(row: _RunRow) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        flow_id=row[1],
        version=row[2],
        status=row[3],
        parent_id=row[4],
        created_at=row[5],
        updated_at=row[6],
        wake_at=row[7],
        state=row[8],
    )


def _flow(row: _FlowRow) -> FlowRecord:
    return FlowRecord(
        flow_id=row[0],
        version=row[1],
        definition=row[2],
        sha256=row[3],
        active=bool(row[4]),
        signature=row[5],
        received_at=row[6],
    )


class _Transaction(AbstractContextManager[None]):
    """The store's one transaction; re-entered by nested blocks.

    Allocated once per store: the hot path pays for two method calls and a
    counter, not for a generator-based context manager.
    """

    __slots__ = ("_store",)

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        store = self._store
        if store._depth == 0:
            try:
                store._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise store._error(exc, "begin a transaction") from exc
            store._doomed = False
        store._depth += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        store = self._store
        store._depth -= 1
        if store._depth:
            if exc_type is not None:
                # The outer block may catch this; it must not commit half.
                store._doomed = True
            return
        conn = store._conn
        if exc_type is not None:
            store._rollback()
            return
        if store._doomed:
            store._rollback()
            raise StoreError(
                f"transaction on {store.path} rolled back: an operation inside it failed "
                "and the failure was caught without leaving the transaction"
            )
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as commit_exc:
            store._rollback()
            raise store._error(commit_exc, "commit") from commit_exc


class SqliteStore:
    """The durable store of one agent, in ``STATE_DIR/state.db``.

    Use from one thread.  Build it with ``SqliteStore.open``.
    """

    def __init__(
        self,
        *,
        conn: sqlite3.Connection,
        path: Path,
        lock_fd: int | None,
        clock: Callable[[], float],
        busy_timeout: float,
    ) -> None:
        self._conn = conn  # prepared statements on the hot paths; sqlite-utils for migrations
        self.path = path
        self._lock_fd = lock_fd  # None: a reader's store (open_readonly), which holds no lock
        self._open = True
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._depth = 0
        self._doomed = False
        self._txn = _Transaction(self)

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        synchronous: str = "normal",
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> SqliteStore:
        """Lock ``state_dir``, check and migrate its database, return the store.

        Raises ``StateDirLocked`` when another process owns the directory,
        ``StoreCorrupt`` (after moving the file aside) when the check fails,
        ``StoreError`` for anything else that keeps the database from opening.
        """
        level = sync_level(synchronous)
        state_dir = Path(state_dir)
        files.prepare_dir(state_dir)
        lock_fd = files.acquire_lock(state_dir)
        try:
            path = state_dir / files.DB_NAME
            files.prepare_db_file(path)
            conn = connect(path, level=level, busy_timeout=busy_timeout, clock=clock)
            try:
                if schema_version(conn) != len(MIGRATIONS):
                    # sqlite-utils (several MiB of imports) only when the schema moves.
                    from sqlite_utils import Database

                    db = Database(conn, recursive_triggers=False, execute_plugins=False)
                    apply_migrations(db, path=str(path))
            except BaseException as exc:
                conn.close()
                if isinstance(exc, sqlite3.Error):
                    raise translate(
                        exc, doing="update the schema", path=path, busy_timeout=busy_timeout
                    ) from exc
                raise
        except BaseException:
            files.release_lock(lock_fd)
            raise
        return cls(conn=conn, path=path, lock_fd=lock_fd, clock=clock, busy_timeout=busy_timeout)

    @classmethod
    def open_readonly(
        cls, state_dir: Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = 5.0
    ) -> SqliteStore:
        """Read ``state_dir`` without its lock, next to the process that owns it.

        Nothing is checked or migrated and no row is written (a write raises
        ``StoreError``); a schema older than this code reads is refused.  Like
        any reader of a WAL database, SQLite itself may create the ``-wal`` and
        ``-shm`` files beside it, so the reader needs write access to the
        directory (the agent's own user has it).
        """
        path = Path(state_dir) / files.DB_NAME
        if not path.is_file():
            raise StoreError(f"{path} does not exist", hint="check --state-dir")
        conn = connect_readonly(path, busy_timeout=busy_timeout, schema=len(MIGRATIONS))
        return cls(conn=conn, path=path, lock_fd=None, clock=clock, busy_timeout=busy_timeout)

    # Transactions

    def transaction(self) -> AbstractContextManager[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an exception.

        Nested blocks join the outermost one.  If a nested block fails and an
        outer block catches the exception, the outermost block still rolls
        back, and raises ``StoreError`` when it would have committed.
        """
        return self._txn

    def _rollback(self) -> None:
        self._depth = 0
        self._doomed = False
        # SQLite has already rolled back after some errors (disk full, I/O).
        if self._conn.in_transaction:
            # The original error is what the caller needs to see.
            with suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _error(self, exc: sqlite3.Error, doing: str) -> StoreError:
        if self._depth and not self._conn.in_transaction:
            # SQLite rolled the whole transaction back; later writes in the
            # block would otherwise commit on their own.
            self._doomed = True
        return translate(exc, doing=doing, path=self.path, busy_timeout=self._busy_timeout)

    def _doomed_error(self) -> StoreError:
        return StoreError(
            f"transaction on {self.path} already failed; leave the block to roll it back"
        )

    # Runs

    def insert_run(self, rec: RunRecord) -> None:
        check_status(rec.status)
        if self._doomed:
            raise self._doomed_error()
        try:
            self._conn.execute(
                _INSERT_RUN,
                (
                    rec.run_id,
                    rec.flow_id,
                    rec.version,
                    rec.status,
                    rec.parent_id,
                    rec.created_at,
                    rec.updated_at,
                    rec.wake_at,
                    rec.state,
                ),
            )
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorcode", None) == CONSTRAINT_PRIMARYKEY:
                raise RunExists(f"run {rec.run_id} is already stored in {self.path}") from exc
            raise self._error(exc, f"store run {rec.run_id}") from exc
        except sqlite3.Error as exc:
            raise self._error(exc, f"store run {rec.run_id}") from exc

    def update_run(
        self, run_id: str, *, status: str, state: str, wake_at: float | None = None
    ) -> None:
        check_status(status)
        if self._doomed:
            raise self._doomed_error()
        try:
            cursor = self._conn.execute(
                _UPDATE_RUN, (status, state, wake_at, self._clock(), run_id)
            )
        except sqlite3.Error as exc:
            raise self._error(exc, f"update run {run_id}") from exc
        if cursor.rowcount != 1:
            raise UnknownRun(f"run {run_id} is not stored in {self.path}")

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._one(_GET_RUN, (run_id,), doing=f"read run {run_id}")
        return None if row is None else _run(row)

    def list_runs(
        self,
        *,
        status: str | None = None,
        flow_id: str | None = None,
        top_level: bool = True,
        limit: int = 100,
    ) -> list[RunRecord]:
        clauses: list[str] = []
        params: list[object] = []
        if top_level:
            clauses.append("parent_id IS NULL")
        if status is not None:
            check_status(status)
            clauses.append("status = ?")
            params.append(status)
        if flow_id is not None:
            clauses.append("flow_id = ?")
            params.append(flow_id)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        params.append(limit)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs {where}ORDER BY created_at DESC, rowid DESC LIMIT ?"
        return [_run(row) for row in self._all(sql, params, doing="list runs")]

    def children(self, parent_id: str) -> list[RunRecord]:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE parent_id = ? ORDER BY created_at, rowid"
        return [_run(row) for row in self._all(sql, (parent_id,), doing="list subflow runs")]

    def due_runs(self, now: float, *, limit: int | None = None) -> list[RunRecord]:
        sql = (
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE wake_at <= ? AND status = 'waiting' "
            "ORDER BY wake_at, rowid LIMIT ?"
        )
        rows = self._all(sql, (now, -1 if limit is None else limit), doing="list due runs")
        return [_run(row) for row in rows]

    def count_runs_by_status(self) -> dict[str, int]:
        """Every known status (zero when none), plus any other status stored."""
        counts = dict.fromkeys(sorted(RUN_STATUSES), 0)
        sql = "SELECT status, count(*) FROM runs GROUP BY status"
        for status, count in self._all(sql, (), doing="count runs"):
            counts[status] = count
        return counts

    # Flows

    def put_flow(self, rec: FlowRecord) -> None:
        # Refusals are raised after the block, which wrote nothing: raised
        # inside, they would doom a caller's enclosing transaction.
        with self.transaction():
            row = self._one(
                "SELECT sha256 FROM flows WHERE flow_id = ? AND version = ?",
                (rec.flow_id, rec.version),
                doing=f"read flow {rec.flow_id} v{rec.version}",
            )
            stored = None if row is None else str(row[0])
            if stored is None:
                self._write(
                    f"INSERT INTO flows ({_FLOW_COLUMNS}) VALUES (?, ?, ?, ?, 0, ?, ?)",
                    (
                        rec.flow_id,
                        rec.version,
                        rec.definition,
                        rec.sha256,
                        rec.signature,
                        rec.received_at,
                    ),
                    doing=f"store flow {rec.flow_id} v{rec.version}",
                )
            if rec.active and stored in (None, rec.sha256):
                self._activate(rec.flow_id, rec.version)
        if stored not in (None, rec.sha256):
            raise FlowConflict(
                f"flow {rec.flow_id} version {rec.version} is already stored in "
                f"{self.path} with another content (sha256 {stored}, now {rec.sha256})"
            )

    def get_flow(self, flow_id: str, version: int) -> FlowRecord | None:
        row = self._one(
            f"SELECT {_FLOW_COLUMNS} FROM flows WHERE flow_id = ? AND version = ?",
            (flow_id, version),
            doing=f"read flow {flow_id} v{version}",
        )
        return None if row is None else _flow(row)

    def active_flow(self, flow_id: str) -> FlowRecord | None:
        row = self._one(
            f"SELECT {_FLOW_COLUMNS} FROM flows WHERE flow_id = ? AND active = 1",
            (flow_id,),
            doing=f"read the active version of flow {flow_id}",
        )
        return None if row is None else _flow(row)

    def active_head(self, flow_id: str) -> tuple[int, str] | None:
        row = self._one(
            "SELECT version, sha256 FROM flows WHERE flow_id = ? AND active = 1",
            (flow_id,),
            doing=f"read the active version of flow {flow_id}",
        )
        return None if row is None else (int(row[0]), str(row[1]))

    def activate(self, flow_id: str, version: int) -> None:
        with self.transaction():
            found = self._activate(flow_id, version)
        if not found:
            raise UnknownFlow(f"flow {flow_id} version {version} is not stored in {self.path}")

    def _activate(self, flow_id: str, version: int) -> bool:
        """Switch the active version; ``False`` (and no write) when it is not stored."""
        doing = f"activate flow {flow_id} v{version}"
        found = self._one(
            "SELECT 1 FROM flows WHERE flow_id = ? AND version = ?", (flow_id, version), doing=doing
        )
        if found is None:
            return False
        # Clear first: the unique index allows one active row per flow id.
        self._write(
            "UPDATE flows SET active = 0 WHERE flow_id = ? AND active = 1 AND version != ?",
            (flow_id, version),
            doing=doing,
        )
        self._write(
            "UPDATE flows SET active = 1 WHERE flow_id = ? AND version = ?",
            (flow_id, version),
            doing=doing,
        )
        return True

    def list_flows(self, *, active_only: bool = True) -> list[FlowRecord]:
        where = "WHERE active = 1 " if active_only else ""
        sql = f"SELECT {_FLOW_COLUMNS} FROM flows {where}ORDER BY flow_id, version"
        return [_flow(row) for row in self._all(sql, (), doing="list flows")]

    # Settings and identity facts

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,), doing=f"read {key}")
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
            doing=f"store {key}",
        )

    # Housekeeping

    def integrity_check(self) -> str:
        """Run SQLite's full ``integrity_check``: ``'ok'`` or what is wrong."""
        factory = self._conn.text_factory
        # A damaged page can put bytes that are not UTF-8 into the report.
        self._conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        try:
            rows = self._conn.execute("PRAGMA integrity_check(20)").fetchall()
        except sqlite3.Error as exc:
            if primary_code(exc) in (CORRUPT, NOTADB):
                return str(exc)
            raise self._error(exc, "check the database") from exc
        finally:
            self._conn.text_factory = factory
        return "; ".join(str(row[0]) for row in rows)

    def close(self) -> None:
        """Close the database and release the directory lock; idempotent.

        An open transaction is rolled back.
        """
        if not self._open:
            return
        self._open = False
        try:
            self._conn.close()
        finally:
            if self._lock_fd is not None:
                files.release_lock(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Statement helpers for the colder paths

    def _one(self, sql: str, params: Sequence[object], *, doing: str) -> Any:
        try:
            row = self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc
        return row

    def _all(self, sql: str, params: Sequence[object], *, doing: str) -> list[Any]:
        try:
            rows: list[Any] = self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc
        return rows

    def _write(self, sql: str, params: Sequence[object], *, doing: str) -> None:
        if self._doomed:
            raise self._doomed_error()
        try:
            self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc


if TYPE_CHECKING:
    # mypy proves here that SqliteStore implements the Store protocol.
    _implements: type[Store] = SqliteStore
