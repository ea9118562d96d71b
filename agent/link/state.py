"""What the link remembers in the store: its status, and per-flow sync marks.

The link status is one ``meta`` row (JSON), written on every change so that
``flow-agent status`` (another process, reading without the lock) can say
whether the agent is connected, disconnected, revoked or refused, and since
when.  ``link_flows`` keeps, per flow id, the tenant it came from, the
highest version accepted and the highest activation serial seen: the marks
that make replays and rollbacks of old versions harmless.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Final

from agent.errors import StoreError
from agent.link.outbox import connection
from agent.store.sqlite import SqliteStore

META_KEY: Final = "link.status"
# What to do once the control plane revoked or refused this agent's identity.
REPAIR_HINT: Final = (
    "pair again with a new token: flow-agent pair --token-file FILE (no --force needed),"
    " or set FLOW_AGENT_PAIRING_TOKEN_FILE and start the agent"
)


class LinkState(StrEnum):
    NEVER = "never_connected"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    REVOKED = "revoked"
    AUTH_REFUSED = "auth_refused"

    @property
    def terminal(self) -> bool:
        """Re-pairing is needed: the link does not try again by itself."""
        return self in (LinkState.REVOKED, LinkState.AUTH_REFUSED)


@dataclass(frozen=True, kw_only=True)
class LinkStatus:
    state: LinkState
    since: float | None = None  # unix seconds of the last change
    detail: str | None = None  # why, in words (a close reason, an error)
    session_id: str | None = None

    def to_text(self) -> str:
        doc = asdict(self)
        doc["state"] = self.state.value
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_text(cls, text: str | None) -> LinkStatus:
        if not text:
            return cls(state=LinkState.NEVER)
        try:
            doc = json.loads(text)
            state = LinkState(doc["state"])
        except (ValueError, KeyError, TypeError):
            return cls(state=LinkState.NEVER, detail="unreadable link status")
        return cls(
            state=state,
            since=doc.get("since"),
            detail=doc.get("detail"),
            session_id=doc.get("session_id"),
        )


def read_link_status(store: SqliteStore) -> LinkStatus:
    return LinkStatus.from_text(store.get_meta(META_KEY))


def write_link_status(store: SqliteStore, status: LinkStatus) -> None:
    store.set_meta(META_KEY, status.to_text())


@dataclass(frozen=True, kw_only=True)
class FlowMark:
    flow_id: str
    tenant: str
    version: int  # highest version accepted from this tenant
    serial: int  # highest activation serial seen (0: none)


class FlowMarks:
    """The ``link_flows`` table; writes join the caller's transaction."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._conn = connection(store)

    def get(self, flow_id: str, *, tenant: str) -> FlowMark | None:
        """The mark for ``flow_id``; a mark left by another tenant counts as none."""
        try:
            row = self._conn.execute(
                "SELECT tenant, version, serial FROM link_flows WHERE flow_id = ?", (flow_id,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read flow sync state in {self.store.path}: {exc}") from exc
        if row is None or row[0] != tenant:
            return None
        return FlowMark(flow_id=flow_id, tenant=row[0], version=row[1], serial=row[2])

    def put(self, mark: FlowMark, *, now: float) -> None:
        try:
            self._conn.execute(
                "INSERT INTO link_flows (flow_id, tenant, version, serial, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (flow_id) DO UPDATE SET"
                " tenant = excluded.tenant, version = excluded.version,"
                " serial = excluded.serial, updated_at = excluded.updated_at",
                (mark.flow_id, mark.tenant, mark.version, mark.serial, now),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store flow sync state in {self.store.path}: {exc}") from exc

    def synced_ids(self, *, tenant: str) -> set[str]:
        """Flow ids that came from ``tenant`` through the link."""
        rows = self._conn.execute("SELECT flow_id FROM link_flows WHERE tenant = ?", (tenant,))
        return {str(r[0]) for r in rows.fetchall()}


__all__ = [
    "META_KEY",
    "FlowMark",
    "FlowMarks",
    "LinkState",
    "LinkStatus",
    "read_link_status",
    "write_link_status",
]
