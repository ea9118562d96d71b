"""Schema migrations: an ordered list, one transaction each.

Migration ``n`` (1-based) brings the schema from version ``n - 1`` to ``n``.
It runs inside ``BEGIN IMMEDIATE`` together with ``PRAGMA user_version = n``,
so a process killed in the middle leaves either the old schema and the old
number or the new schema and the new number: SQLite's DDL and the header
field are part of the same transaction.

Rules for adding one: append, never edit or reorder a shipped migration; use
only statements that stay inside the transaction (sqlite-utils ``create`` and
``create_index`` do; ``transform`` and ``enable_wal`` manage transactions
themselves and must not be used here); keep each one fast, since it runs at
start-up with the state directory locked.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent.errors import StoreError

if TYPE_CHECKING:  # sqlite-utils is imported only when a migration runs
    from sqlite_utils import Database

Migration = Callable[["Database"], None]


def _m001_initial(db: Database) -> None:
    runs = db.create_table(
        "runs",
        {
            "run_id": str,
            "flow_id": str,
            "version": int,
            "status": str,
            "parent_id": str,
            "created_at": float,
            "updated_at": float,
            "wake_at": float,
            # Last, so the small columns sit at the front of each row.
            "state": str,
        },
        pk="run_id",
        not_null={"flow_id", "version", "status", "created_at", "updated_at", "state"},
    )
    # Listing queries order by created_at, ties broken by rowid (insertion
    # order); SQLite appends the rowid to every index, so these serve both
    # the filter and the ORDER BY without a sort.  Partial indexes keep the
    # hot insert/update path from maintaining entries nobody queries.
    db.execute("CREATE INDEX runs_top ON runs (created_at) WHERE parent_id IS NULL")
    runs.create_index(["status", "created_at"], index_name="runs_status")
    runs.create_index(["flow_id", "created_at"], index_name="runs_flow")
    db.execute(
        "CREATE INDEX runs_parent ON runs (parent_id, created_at) WHERE parent_id IS NOT NULL"
    )
    db.execute("CREATE INDEX runs_wake ON runs (status, wake_at) WHERE wake_at IS NOT NULL")

    db.create_table(
        "flows",
        {
            "flow_id": str,
            "version": int,
            "sha256": str,
            "active": int,
            "signature": str,
            "received_at": float,
            "definition": str,
        },
        pk=("flow_id", "version"),
        not_null={"sha256", "active", "received_at", "definition"},
        defaults={"active": 0},
    )
    # The database itself holds "at most one active version per flow id".
    db.execute("CREATE UNIQUE INDEX flows_one_active ON flows (flow_id) WHERE active = 1")

    db.create_table("meta", {"key": str, "value": str}, pk="key", not_null={"value"})


def _m002_link(db: Database) -> None:
    """The link to the control plane: the event outbox, flow-sync and seq state.

    ``outbox`` holds events not yet acknowledged by the control plane; ``seq``
    is the per-agent sequence number, handed out from ``outbox_seq`` (one
    row) so numbers stay contiguous even after acknowledged rows are deleted.
    ``outbox_open`` remembers, per run, the element a run is still inside (a
    connector call, a page, a timer, a subflow) so its ``element.left`` event
    carries the whole time spent there.  ``link_flows`` is the highest version
    and activation serial accepted per flow id from the paired tenant.
    """
    db.create_table(
        "outbox",
        {"seq": int, "kind": str, "run_id": str, "at": str, "data": str},
        pk="seq",
        not_null={"kind", "at", "data"},
    )
    db.create_table(
        "outbox_seq",
        {"id": int, "last": int},
        pk="id",
        not_null={"last"},
    )
    db.execute("INSERT INTO outbox_seq (id, last) VALUES (1, 0)")
    db.create_table(
        "outbox_open",
        {"run_id": str, "element": str, "visit": int, "entered_at": float},
        pk="run_id",
        not_null={"element", "visit", "entered_at"},
    )
    db.create_table(
        "link_flows",
        {"flow_id": str, "tenant": str, "version": int, "serial": int, "updated_at": float},
        pk="flow_id",
        not_null={"tenant", "version", "serial", "updated_at"},
        defaults={"serial": 0},
    )


def _m003_secrets(db: Database) -> None:
    """The agent's secret store (``agent.secrets``): AES-GCM ciphertexts only.

    ``nonce`` and ``ciphertext`` are the AES-GCM nonce and sealed value (tag
    included) under the key in ``secrets.key``; the name is bound as the
    associated data, so a row copied under another name does not open.
    """
    db.create_table(
        "secrets",
        {
            "name": str,
            "nonce": bytes,
            "ciphertext": bytes,
            "created_at": float,
            "updated_at": float,
        },
        pk="name",
        not_null={"nonce", "ciphertext", "created_at", "updated_at"},
    )


def _m004_schedules(db: Database) -> None:
    """Schedule triggers (``agent.runtime.triggers``): what fired, and how far each got.

    ``schedule_fires`` has one row per (flow, fire time), written before the
    run starts; its run id is derived from the two, so the row and the
    ``runs`` primary key together make a fire start one run, even across a
    crash between the two writes.  ``error`` holds why a fire started no run
    (its inputs did not fit).  ``schedule_marks`` is, per flow and schedule
    (cron and time zone), the latest fire time handled, or the time the
    schedule was first seen: the point from which missed fires are counted.
    """
    db.create_table(
        "schedule_fires",
        {
            "flow_id": str,
            "fire_time": int,
            "run_id": str,
            "recorded_at": float,
            "error": str,
        },
        pk=("flow_id", "fire_time"),
        not_null={"run_id", "recorded_at"},
    )
    db.create_table(
        "schedule_marks",
        {"flow_id": str, "schedule": str, "last_fire": float, "updated_at": float},
        pk=("flow_id", "schedule"),
        not_null={"last_fire", "updated_at"},
    )


def _m005_outbox_rows(db: Database) -> None:
    """One outbox row per committed step instead of one per event (``agent.link.outbox``).

    A row is keyed by the sequence number of its first event (``seq``) and
    holds ``count`` events as one JSON text, ``[run_id, [entry, ...]]``, whose
    general entry is ``[kind, run_id, at, data]`` (the outbox also writes
    shorter entries for element events); the numbers stay per event and
    contiguous, so ``min(seq)`` is still the first unacknowledged event and
    ``outbox_seq.last`` the last one numbered.  The events already waiting
    become rows of one general entry each; their ``data`` text is copied as
    it was, not decoded and encoded again.
    """
    conn = db.conn
    conn.execute(
        "CREATE TABLE outbox_rows ("
        "seq INTEGER PRIMARY KEY, count INTEGER NOT NULL, events TEXT NOT NULL)"
    )
    insert = "INSERT INTO outbox_rows (seq, count, events) VALUES (?, 1, ?)"
    after = 0
    # In slices: the outbox may hold its whole limit (100,000 events by default).
    while rows := conn.execute(
        "SELECT seq, kind, run_id, at, data FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1000",
        (after,),
    ).fetchall():
        conn.executemany(
            insert,
            [
                (seq, f"[null,[[{json.dumps(kind)},{json.dumps(run_id)},{json.dumps(at)},{data}]]]")
                for seq, kind, run_id, at, data in rows
            ],
        )
        after = rows[-1][0]
    conn.execute("DROP TABLE outbox")
    conn.execute("ALTER TABLE outbox_rows RENAME TO outbox")


def _m006_outbox_counter(db: Database) -> None:
    """The outbox's counter is no longer written with every step.

    Each step wrote the one-row ``outbox_seq`` besides its events: one more
    page in the WAL per step, for a number the events already carry.  The
    counter moves to ``outbox_counter``, which keeps the highest number only
    for when rows that carried it are deleted (acks, ``skip_to``, ``reset``);
    ``outbox_seq`` becomes a view with the same columns and the same answer:
    the higher of that and the last number the rows hold.
    """
    conn = db.conn
    conn.execute("CREATE TABLE outbox_counter (id INTEGER PRIMARY KEY, last INTEGER NOT NULL)")
    conn.execute("INSERT INTO outbox_counter (id, last) SELECT id, last FROM outbox_seq")
    conn.execute("DROP TABLE outbox_seq")
    conn.execute(
        "CREATE VIEW outbox_seq AS SELECT c.id AS id, max(c.last, coalesce("
        "(SELECT seq + count - 1 FROM outbox ORDER BY seq DESC LIMIT 1), 0)) AS last"
        " FROM outbox_counter c"
    )


MIGRATIONS: Sequence[Migration] = (
    _m001_initial,
    _m002_link,
    _m003_secrets,
    _m004_schedules,
    _m005_outbox_rows,
    _m006_outbox_counter,
)


class SchemaTooNew(StoreError):
    """The database was written by a newer flow-agent."""


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def apply_migrations(
    db: Database, *, path: str, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Bring the schema up to ``len(migrations)``; return the version reached.

    The connection must be in autocommit mode (``isolation_level=None``).
    """
    conn = db.conn
    known = len(migrations)
    found = schema_version(conn)
    if found > known:
        raise SchemaTooNew(
            f"{path} has schema version {found}, but this flow-agent knows versions "
            f"up to {known}: it was written by a newer flow-agent",
            hint="upgrade flow-agent, or use another --state-dir",
        )
    for number in range(found + 1, known + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: the number we saw may be stale.
            if schema_version(conn) >= number:
                conn.execute("ROLLBACK")
                continue
            migrations[number - 1](db)
            # PRAGMA takes no parameters; number is an int we computed.
            conn.execute(f"PRAGMA user_version = {number:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return schema_version(conn)
