"""Connection pools of the ``sql`` connector: SQLite and PostgreSQL.

``SqliteBackend`` keeps up to ``size`` ``sqlite3`` connections and runs every
statement on a thread of its own small pool, so a slow query never blocks
the event loop; a progress handler aborts a statement past its deadline.
``PostgresBackend`` is an asyncpg pool; asyncpg cancels a statement on the
server when its timeout passes.

Both raise ``ConnectFailed`` when no connection could be had (the statement
did not run: safe to retry) and ``StatementFailed`` when the statement was
sent and failed (not retried: it may have had effects).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote

from agent.connectors.sql_text import (
    Statement,
    json_dumps,
    json_loads,
    pg_value,
    plain,
    sqlite_value,
)

_CLOSE_GRACE: Final = 5.0


class ConnectFailed(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class StatementFailed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_count: int = 0


class Backend(Protocol):
    async def run(
        self,
        kind: str,
        statement: Statement,
        params: Mapping[str, Any],
        *,
        timeout: float,
        max_rows: int,
    ) -> Outcome: ...

    async def close(self) -> None: ...


def _too_many(max_rows: int) -> StatementFailed:
    return StatementFailed(
        f"the query returned more than {max_rows} rows (add a LIMIT, or raise max_rows)"
    )


# -- SQLite --------------------------------------------------------------------------


@dataclass(slots=True)
class _Work:
    """One statement's run on a worker thread, and what it ended with."""

    conn: sqlite3.Connection | None
    outcome: Outcome | None = None
    error: Exception | None = None


class SqliteBackend:
    def __init__(self, path: Path, *, readonly: bool, size: int) -> None:
        self._path = path
        self._readonly = readonly
        self._idle: list[sqlite3.Connection] = []
        self._slots = asyncio.Semaphore(size)
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="flow-agent-sql")
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        # mode=rw does not create a missing file: a typo in a path must fail.
        mode = "ro" if self._readonly else "rw"
        uri = f"file:{quote(str(self._path))}?mode={mode}"
        try:
            return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConnectFailed(
                f"cannot open {self._path} ({exc}; the file must exist)", retryable=False
            ) from None

    async def run(
        self,
        kind: str,
        statement: Statement,
        params: Mapping[str, Any],
        *,
        timeout: float,
        max_rows: int,
    ) -> Outcome:
        if self._closed:
            raise ConnectFailed("the connection pool is closed", retryable=False)
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise ConnectFailed(
                f"no free connection within {timeout:g} s", retryable=True
            ) from None
        try:
            work = _Work(self._idle.pop() if self._idle else None)
            values = [sqlite_value(v) for v in statement.qmark_values(params)]
            job = (work, kind, statement.qmark, values, deadline, max_rows)
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._execute, *job)
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                # The thread finishes on its own (the deadline stops it); its
                # connection goes back to the pool then, not into the void.
                future.add_done_callback(lambda _: self._give_back(work.conn))
                raise
            self._give_back(work.conn)
        finally:
            self._slots.release()
        if work.error is not None:
            raise work.error
        assert work.outcome is not None
        return work.outcome

    def _give_back(self, conn: sqlite3.Connection | None) -> None:
        if conn is None:
            return
        if self._closed:
            conn.close()
        else:
            self._idle.append(conn)

    def _execute(
        self,
        work: _Work,
        kind: str,
        sql: str,
        values: list[Any],
        deadline: float,
        max_rows: int,
    ) -> None:
        try:
            if work.conn is None:
                work.conn = self._connect()
            work.outcome = _sqlite_statement(work.conn, kind, sql, values, deadline, max_rows)
        except (ConnectFailed, StatementFailed) as exc:
            work.error = exc

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)


def _sqlite_statement(
    conn: sqlite3.Connection,
    kind: str,
    sql: str,
    values: list[Any],
    deadline: float,
    max_rows: int,
) -> Outcome:
    remaining_ms = max(int((deadline - time.monotonic()) * 1000), 1)
    conn.execute(f"PRAGMA busy_timeout = {remaining_ms:d}")
    # Checked every 1000 virtual-machine steps: a runaway query stops soon
    # after its deadline, even while it returns no rows.
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        conn.execute("BEGIN")
        cursor = conn.execute(sql, values)
        columns = [d[0] for d in cursor.description] if cursor.description else []
        if kind == "query":
            fetched = cursor.fetchmany(max_rows + 1)
            if len(fetched) > max_rows:
                raise _too_many(max_rows)
            rows = [{c: plain(v) for c, v in zip(columns, row, strict=True)} for row in fetched]
            count = len(rows)
        else:
            rows = []
            count = cursor.rowcount if cursor.rowcount >= 0 else len(cursor.fetchall())
        conn.execute("COMMIT")
        return Outcome(rows=rows, row_count=count)
    except sqlite3.Error as exc:
        _rollback(conn)
        if time.monotonic() > deadline:
            raise StatementFailed("it ran over its timeout and was stopped") from None
        raise StatementFailed(f"{exc}") from None
    except StatementFailed:
        _rollback(conn)
        raise
    finally:
        conn.set_progress_handler(None, 0)


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite may have rolled back already (an interrupt can do that).
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


# -- PostgreSQL ----------------------------------------------------------------------


async def _init_connection(conn: Any) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json_dumps, decoder=json_loads, schema="pg_catalog")


class PostgresBackend:
    def __init__(
        self, dsn: str, *, password: str | None, size: int, connect_timeout: float
    ) -> None:
        self._dsn = dsn
        self._password = password
        self._size = size
        self._connect_timeout = connect_timeout
        self._pool: Any = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def _get_pool(self) -> Any:
        import asyncpg

        async with self._lock:
            if self._closed:
                raise ConnectFailed("the connection pool is closed", retryable=False)
            if self._pool is None:
                try:
                    # min_size=0: nothing connects until the first statement.
                    self._pool = await asyncpg.create_pool(
                        dsn=self._dsn,
                        password=self._password,
                        min_size=0,
                        max_size=self._size,
                        init=_init_connection,
                        timeout=self._connect_timeout,
                    )
                except (ValueError, asyncpg.InterfaceError) as exc:
                    raise ConnectFailed(f"bad dsn ({exc})", retryable=False) from None
            return self._pool

    async def run(
        self,
        kind: str,
        statement: Statement,
        params: Mapping[str, Any],
        *,
        timeout: float,
        max_rows: int,
    ) -> Outcome:
        import asyncpg

        pool = await self._get_pool()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            conn = await pool.acquire(timeout=timeout)
        except Exception as exc:
            raise _connect_failed(exc, timeout) from None
        try:

            def left() -> float:
                return max(deadline - loop.time(), 0.001)

            async with conn.transaction():
                prepared = await conn.prepare(statement.numbered, timeout=left())
                types = [t.name for t in prepared.get_parameters()]
                values = statement.numbered_values(params)
                args = []
                for name, type_name, value in zip(statement.names, types, values, strict=True):
                    try:
                        args.append(pg_value(type_name, value))
                    except ValueError as exc:
                        raise StatementFailed(f"parameter :{name} ({type_name}): {exc}") from None
                if kind == "query":
                    rows: list[dict[str, Any]] = []
                    prefetch = min(max_rows + 1, 500)
                    async for record in prepared.cursor(*args, prefetch=prefetch, timeout=left()):
                        if len(rows) == max_rows:
                            raise _too_many(max_rows)
                        rows.append({k: plain(v) for k, v in record.items()})
                    return Outcome(rows=rows, row_count=len(rows))
                await prepared.fetch(*args, timeout=left())
                return Outcome(row_count=_status_count(prepared.get_statusmsg()))
        except TimeoutError:
            raise StatementFailed(
                f"it ran over its timeout of {timeout:g} s and was cancelled"
            ) from None
        except asyncpg.PostgresError as exc:
            raise StatementFailed(_pg_message(exc)) from None
        except asyncpg.InterfaceError as exc:
            raise StatementFailed(str(exc)) from None
        except OSError as exc:
            raise StatementFailed(f"the connection failed ({exc})") from None
        finally:
            await pool.release(conn)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_GRACE)
        except TimeoutError:
            pool.terminate()


def _status_count(status: str | None) -> int:
    # "UPDATE 3", "INSERT 0 1", "DELETE 0", "SELECT 5": the count comes last.
    last = (status or "").rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _pg_message(exc: Any) -> str:
    message = getattr(exc, "message", None) or str(exc)
    detail = getattr(exc, "detail", None)
    text = f"{message} (SQLSTATE {exc.sqlstate})" if getattr(exc, "sqlstate", None) else message
    return f"{text}: {detail}" if detail else text


def _connect_failed(exc: BaseException, timeout: float) -> ConnectFailed:
    import asyncpg

    if isinstance(exc, TimeoutError):
        return ConnectFailed(f"no connection within {timeout:g} s", retryable=True)
    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
        return ConnectFailed(_pg_message(exc), retryable=True)
    if isinstance(exc, asyncpg.PostgresError):
        # Authentication, an unknown database or role: asking again will not help.
        return ConnectFailed(_pg_message(exc), retryable=False)
    if isinstance(exc, OSError):
        return ConnectFailed(exc.strerror or str(exc), retryable=True)
    return ConnectFailed(f"{type(exc).__name__}: {exc}", retryable=False)
