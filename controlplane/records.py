"""Rows of the control plane's database as frozen records, and their JSON form."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

Clock = Callable[[], float]

RUN_STATUS_BY_KIND: Final = {
    "run.started": "running",
    "run.waiting": "waiting",
    "run.completed": "completed",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
}
# A waiter on a run is released by these: the run ended, needs a person, or never started.
# The control plane's own states, as a run result status (flow-format.md) sees them.
_RESULT_STATUS: Final = {"dispatched": "running", "accepted": "running", "refused": "failed"}
SETTLED_RUN_STATUSES: Final = frozenset({"waiting", "completed", "failed", "cancelled", "refused"})


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def loads_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class AgentRecord:
    id: str
    tenant: str
    name: str
    public_key: str
    facts: dict[str, Any]
    version: str | None
    online: bool
    revoked: bool
    last_seen: float | None
    last_seq: int
    status_report: dict[str, Any] | None
    sealing_key: str | None = None  # X25519, base64url; None: paired before sealed secrets

    @property
    def status(self) -> str:
        return "revoked" if self.revoked else "online" if self.online else "offline"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "status": self.status,
            "version": self.version,
            "last_seen": iso(self.last_seen),
            "last_seq": self.last_seq,
            "facts": self.facts,
            "report": self.status_report,
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AgentRecord:
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            name=row["name"],
            public_key=row["public_key"],
            facts=json.loads(row["facts"]),
            version=row["version"],
            online=bool(row["online"]),
            revoked=row["revoked_at"] is not None,
            last_seen=row["last_seen"],
            last_seq=row["last_seq"],
            status_report=loads_or_none(row["status"]),
            sealing_key=row["sealing_key"],
        )


@dataclass(frozen=True, kw_only=True)
class FlowVersion:
    tenant: str
    flow_id: str
    version: int
    definition: dict[str, Any]
    sha256: str
    signature: str
    published_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "id": self.flow_id,
            "version": self.version,
            "sha256": self.sha256,
            "signature": self.signature,
            "published_at": iso(self.published_at),
            "definition": self.definition,
        }


@dataclass(frozen=True, kw_only=True)
class ActiveFlow:
    """The active version of one flow, and how it was chosen."""

    flow: FlowVersion
    serial: int
    chosen_by: str
    activation_signature: str | None


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    id: str
    tenant: str
    flow: str
    version: int | None
    agent_id: str | None
    inputs: dict[str, Any]
    status: str
    reason: str | None
    reason_message: str | None
    result: dict[str, Any] | None
    origin: str
    acked: bool
    created_at: float
    updated_at: float

    @property
    def settled(self) -> bool:
        return self.status in SETTLED_RUN_STATUSES

    def run_result(self) -> dict[str, Any]:
        """The run result as the agent reported it, or the control plane's view so far."""
        if self.result is not None:
            return self.result
        error = None
        if self.status == "refused":
            why = f"{self.reason_message} ({self.reason})" if self.reason_message else self.reason
            error = {"element": None, "message": f"the agent refused the run: {why}"}
        return {
            "run_id": self.id,
            "flow": self.flow,
            "version": self.version,
            "status": _RESULT_STATUS.get(self.status, self.status),
            "outputs": {},
            "path": [],
            "waiting": None,
            "error": error,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "tenant": self.tenant,
            "flow": self.flow,
            "version": self.version,
            "agent": self.agent_id,
            "status": self.status,
            "reason": self.reason,
            "reason_message": self.reason_message,
            "origin": self.origin,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "result": self.run_result(),
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RunRecord:
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            flow=row["flow"],
            version=row["version"],
            agent_id=row["agent_id"],
            inputs=json.loads(row["inputs"]),
            status=row["status"],
            reason=row["reason"],
            reason_message=row["reason_message"],
            result=loads_or_none(row["result"]),
            origin=row["origin"],
            acked=bool(row["acked"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


def flow_from_row(row: sqlite3.Row) -> FlowVersion:
    return FlowVersion(
        tenant=row["tenant"],
        flow_id=row["flow_id"],
        version=row["version"],
        definition=json.loads(row["definition"]),
        sha256=row["sha256"],
        signature=row["signature"],
        published_at=row["published_at"],
    )
