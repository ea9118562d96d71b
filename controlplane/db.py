"""SQLite for the control plane: one connection, one writer thread, migrations.

Every call into the database runs on a single worker thread
(:meth:`Database.run`), so writes are serialised without the event loop ever
blocking on disk, and ``BEGIN IMMEDIATE`` transactions make each operation
atomic (a pairing token is consumed exactly once, versions never repeat).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TypeVar

from agent.errors import StoreError

T = TypeVar("T")

MIGRATIONS: Final[list[str]] = [
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        created_at REAL NOT NULL
    );
    CREATE TABLE tokens (
        secret_hash TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        agent_id TEXT
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        name TEXT NOT NULL,
        public_key TEXT NOT NULL,
        facts TEXT NOT NULL,
        version TEXT,
        online INTEGER NOT NULL DEFAULT 0,
        revoked_at REAL,
        last_seen REAL,
        last_seq INTEGER NOT NULL DEFAULT 0,
        status TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX agents_tenant ON agents(tenant);
    CREATE TABLE flow_versions (
        tenant TEXT NOT NULL REFERENCES tenants(name),
        flow_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        definition TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        signature TEXT NOT NULL,
        published_at REAL NOT NULL,
        PRIMARY KEY (tenant, flow_id, version)
    );
    CREATE TABLE active_flows (
        tenant TEXT NOT NULL,
        flow_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        serial INTEGER NOT NULL DEFAULT 0,
        chosen_by TEXT NOT NULL CHECK (chosen_by IN ('publish', 'activate')),
        activation_signature TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant, flow_id),
        FOREIGN KEY (tenant, flow_id, version)
            REFERENCES flow_versions(tenant, flow_id, version)
    );
    CREATE TABLE flow_acks (
        agent_id TEXT NOT NULL REFERENCES agents(id),
        flow_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        reason TEXT,
        at REAL NOT NULL,
        PRIMARY KEY (agent_id, flow_id, version)
    );
    CREATE TABLE events (
        agent_id TEXT NOT NULL REFERENCES agents(id),
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        run_id TEXT,
        at TEXT NOT NULL,
        data TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (agent_id, seq)
    );
    CREATE INDEX events_run ON events(run_id);
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        flow TEXT NOT NULL,
        version INTEGER,
        agent_id TEXT,
        inputs TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        result TEXT,
        origin TEXT NOT NULL,
        acked INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX runs_tenant ON runs(tenant, created_at);
    CREATE INDEX runs_agent ON runs(agent_id, acked);
    """,
    # 2: the agent's X25519 key for sealed secrets (NULL: paired before sealed secrets).
    """
    ALTER TABLE agents ADD COLUMN sealing_key TEXT;
    """,
    # 3: dispatched runs stored before the version was taken from the agent's reports.
    """
    UPDATE runs SET version = json_extract(result, '$.version')
    WHERE version IS NULL AND json_valid(result)
        AND json_type(result, '$.version') = 'integer';
    """,
    # 4: what a refusing agent told a person, beside its reason code.
    """
    ALTER TABLE runs ADD COLUMN reason_message TEXT;
    """,
]


class Database:
    """Owns the connection; only the worker thread ever touches it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cp-db")
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open and migrate; call through :meth:`run` or before serving."""
        try:
            # SQLite gives -wal and -shm the main file's mode, so creating it 0600 covers all three.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {self.path.name}: {exc}") from exc
        self._conn = conn
        self._migrate()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the database is not open")
        return self._conn

    def _migrate(self) -> None:
        current = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if current > len(MIGRATIONS):
            raise StoreError(
                f"the database schema (v{current}) is newer than this control plane knows",
                hint="upgrade flow-controlplane",
            )
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            # executescript commits first; the schema change and user_version go in one transaction.
            self.conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;"
            )

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once so no other writer interleaves."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    def close(self) -> None:
        if self._conn is not None:
            self._executor.submit(self._conn.close).result()
            self._conn = None
        self._executor.shutdown(wait=True)
