"""A run's state: plain data, encoded to JSON for the store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import values as V
from .model import Flow


@dataclass(slots=True)
class RunState:
    run_id: str
    flow_id: str
    version: int
    status: str = "running"  # running waiting completed failed cancelled
    values: dict[str, Any] = field(default_factory=dict)
    current: str | None = None  # the element to execute next, or waited on
    path: list[str] = field(default_factory=list)
    waiting: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None  # an outstanding connector call or child run
    parent: dict[str, Any] | None = None  # {"run_id", "element", "visit"} for a child run

    @property
    def steps(self) -> int:
        return len(self.path)

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    def copy(self) -> RunState:
        return RunState(
            self.run_id,
            self.flow_id,
            self.version,
            self.status,
            dict(self.values),
            self.current,
            list(self.path),
            dict(self.waiting) if self.waiting else None,
            dict(self.error) if self.error else None,
            dict(self.pending) if self.pending else None,
            self.parent,
        )

    def to_json(self) -> str:
        return V.dumps(
            {
                "run_id": self.run_id,
                "flow": self.flow_id,
                "version": self.version,
                "status": self.status,
                "values": self.values,
                "current": self.current,
                "path": self.path,
                "waiting": self.waiting,
                "error": self.error,
                "pending": self.pending,
                "parent": self.parent,
            }
        )

    @classmethod
    def from_json(cls, text: str, flow: Flow) -> RunState:
        raw = V.loads(text)
        values = raw["values"]
        for name, spec in flow.values.items():
            if name in values:
                values[name] = V.revive(spec.type, values[name])
        return cls(
            raw["run_id"],
            raw["flow"],
            int(raw["version"]),
            raw["status"],
            values,
            raw["current"],
            raw["path"],
            raw["waiting"],
            raw["error"],
            raw["pending"],
            raw["parent"],
        )

    @staticmethod
    def peek(text: str) -> dict[str, Any]:
        """The stored JSON without reviving values (for listings)."""
        result: dict[str, Any] = json.loads(text)
        return result
