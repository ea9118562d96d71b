"""The interface the rest of the agent sees of the durable store.

The runner is the single writer.  It calls the store synchronously; calls are
small and fast (SQLite on the local disk), so they run on the event loop's
thread.  The engine encodes a run's state as JSON text; the store keeps that
text as it is and never looks inside.

Contract for every implementation
---------------------------------
``SqliteStore`` is the implementation for one agent owning one state
directory.  A second implementation (for example PostgreSQL, so that several
agent replicas share one runtime's state) must guarantee the following, which
the callers rely on and the tests of ``SqliteStore`` pin down:

* **Atomic, durable writes.**  A method that returns has committed (outside a
  ``transaction()`` block) or will commit with its block; a commit that
  returned survives a killed process.  Power-loss durability is the
  implementation's documented sync level.
* **Transactions.**  ``transaction()`` is all-or-nothing and serialisable with
  respect to other writers; an exception leaving the block rolls everything
  back.  Blocks nest: an inner block joins the outer one.  When an inner
  block fails and the outer block swallows the exception, the outer block must
  still roll back (raising ``StoreError``) instead of committing half of it.
  Refusals that write nothing (``RunExists``, ``UnknownRun``, ``UnknownFlow``,
  ``FlowConflict``) may be caught inside a block without spoiling it.
* **Read your writes.**  A read after a write on the same store object sees
  that write, inside or outside a transaction.
* **Identity and conflicts.**  ``run_id`` is unique: inserting it twice raises
  ``RunExists``.  Updating a run that does not exist raises ``UnknownRun``.
  ``(flow_id, version)`` is unique and immutable: ``put_flow`` of the same
  version with the same ``sha256`` is a no-op, with another digest it raises
  ``FlowConflict``.  At most one version per flow id is active, enforced by the
  database itself (a unique constraint), and ``activate`` switches atomically:
  readers see the old or the new active version, never none or two.
* **Time is the caller's.**  Timestamps are float unix seconds from the
  agent's injected clock, never the database server's clock.  ``wake_at`` is
  compared with the ``now`` the caller passes.
* **Ordering.**  Listings are newest first by ``created_at``; runs created at
  the same instant come newest-inserted first.
* **Errors.**  Every failure is an ``agent.errors.StoreError`` (or subclass)
  whose message names the database, translated with ``raise ... from``.
  Misuse (an unknown status) is a ``ValueError``.
* **Exclusive ownership.**  ``SqliteStore`` locks its directory so one process
  writes.  With a shared database that lock disappears, so a shared
  implementation must add what the lock gave for free: a run is advanced by
  one replica at a time (a lease or ``SELECT ... FOR UPDATE SKIP LOCKED`` when
  claiming ``due_runs``, or a compare-and-set on ``update_run``).  This
  interface does not have a claim/lease call yet; adding it is part of that
  work.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from agent.errors import StoreError

# The run statuses of the run-result contract (flow-format.md).
RUNNING = "running"
WAITING = "waiting"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
RUN_STATUSES = frozenset({RUNNING, WAITING, COMPLETED, FAILED, CANCELLED})


class RunExists(StoreError):
    """A run with this id is already stored."""


class UnknownRun(StoreError):
    """No run with this id is stored."""


class UnknownFlow(StoreError):
    """No flow with this id and version is stored."""


class FlowConflict(StoreError):
    """This flow version is stored with different content."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    run_id: str
    flow_id: str
    version: int
    status: str  # one of RUN_STATUSES
    parent_id: str | None  # the run that started this one as a subflow
    created_at: float  # unix seconds
    updated_at: float  # unix seconds
    state: str  # the engine's JSON text, stored as given
    wake_at: float | None = None  # a waiting run's timer, unix seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowRecord:
    flow_id: str
    version: int
    definition: str  # the flow/v1 document as JSON text
    sha256: str  # hex digest of the document as received
    active: bool
    signature: str | None  # the tenant-key signature, when the flow came signed
    received_at: float  # unix seconds


class Store(Protocol):
    """Durable state of one runtime: runs, flows and a few settings."""

    def transaction(self) -> AbstractContextManager[None]:
        """Group writes into one atomic commit; nested blocks join the outer."""
        ...

    # Runs

    def insert_run(self, rec: RunRecord) -> None: ...

    def update_run(
        self, run_id: str, *, status: str, state: str, wake_at: float | None = None
    ) -> None:
        """Replace status, state and timer; ``updated_at`` becomes the clock's now."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def list_runs(
        self,
        *,
        status: str | None = None,
        flow_id: str | None = None,
        top_level: bool = True,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Newest first.  ``top_level`` leaves out subflow runs."""
        ...

    def children(self, parent_id: str) -> list[RunRecord]:
        """The subflow runs started by ``parent_id``, oldest first."""
        ...

    def due_runs(self, now: float, *, limit: int | None = None) -> list[RunRecord]:
        """Waiting runs whose ``wake_at`` is at or before ``now``, earliest first."""
        ...

    def count_runs_by_status(self) -> dict[str, int]: ...

    # Flows

    def put_flow(self, rec: FlowRecord) -> None:
        """Store a flow version (idempotent); when ``rec.active``, also activate it."""
        ...

    def get_flow(self, flow_id: str, version: int) -> FlowRecord | None: ...

    def active_flow(self, flow_id: str) -> FlowRecord | None: ...

    def active_head(self, flow_id: str) -> tuple[int, str] | None:
        """The active version's (version, sha256), without its definition."""
        ...

    def activate(self, flow_id: str, version: int) -> None:
        """Make this stored version the only active one of its flow id."""
        ...

    def list_flows(self, *, active_only: bool = True) -> list[FlowRecord]: ...

    # Settings and identity facts

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    # Housekeeping

    def integrity_check(self) -> str:
        """``'ok'``, or a description of the damage."""
        ...

    def close(self) -> None: ...


def check_status(status: str) -> None:
    """Refuse a status outside the run-result contract (a caller bug)."""
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {sorted(RUN_STATUSES)}")
