"""Flow documents and a small engine driver shared by the flow tests."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.flow.commands import Event
from agent.flow.engine import Engine, Step
from agent.flow.model import Flow, parse_flow
from agent.flow.parse import CONNECTOR_TYPES
from agent.flow.state import RunState

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "s3cr3t-Erp-T0ken"


EXAMPLES = Path(__file__).parents[2] / "examples"


def example_flows() -> dict[str, dict[str, Any]]:
    """Every flow document under examples/, by its path there."""
    found = {}
    for path in sorted(EXAMPLES.rglob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and doc.get("format") == "flow/v1":
            found[path.relative_to(EXAMPLES).as_posix()] = doc
    return found


def plugin_types(doc: Mapping[str, Any]) -> set[str]:
    """Connector types a document uses that only a plugin provides."""
    connectors = doc.get("connectors", {})
    return {c.get("type") for c in connectors.values()} - set(CONNECTOR_TYPES)


def flow_doc(
    *,
    elements: dict[str, Any],
    values: dict[str, Any] | None = None,
    connectors: dict[str, Any] | None = None,
    start: str | None = None,
    flow_id: str = "t",
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": "flow/v1",
        "id": flow_id,
        "start": start or next(iter(elements)),
        "elements": elements,
        **extra,
    }
    if values is not None:
        doc["values"] = values
    if connectors is not None:
        doc["connectors"] = connectors
    return doc


def every_element_flow() -> dict[str, Any]:
    """A valid flow that uses every element type, trigger kind and operand kind."""
    return copy.deepcopy(_EVERY)


_EVERY: dict[str, Any] = {
    "format": "flow/v1",
    "id": "every-element",
    "name": "Every element",
    "version": 2,
    "values": {
        "amount": {"type": "number", "access": "input", "default": 0},
        "customer": {"type": "object", "access": "input_output"},
        "note": {"type": "string", "access": "output"},
        "approved": {"type": "boolean", "access": "output", "default": False},
        "ticket": {"type": "string", "access": "output"},
        "http_status": {"type": "number"},
        "trace": {"type": "string"},
        "due": {"type": "datetime", "default": "2026-01-01T09:00:00+02:00"},
        "score": {"type": "number"},
        "lines": {"type": "list", "default": []},
        "token": {"type": "secret", "secret": "erp-token"},
    },
    "connectors": {
        "erp": {
            "type": "http",
            "base_url": "https://erp.example/api",
            "headers": {"Authorization": "Bearer {{ token }}"},
            "timeout": 10,
        }
    },
    "triggers": [{"schedule": "*/5 * * * *", "timezone": "Europe/Paris"}, {"webhook": True}],
    "start": "prepare",
    "elements": {
        "prepare": {
            "type": "operator",
            "label": "Prepare",
            "operations": [
                {"set": "note", "to": "Invoice for {{ customer.name }}"},
                {"append": "lines", "item": {"ref": "amount"}},
                {"add": "amount", "by": {"expr": "0.1 + 0.2"}},
                {"set": "customer.status", "to": {"literal": "checking"}},
            ],
            "next": "notify",
        },
        "notify": {
            "type": "message",
            "connector": "erp",
            "action": "POST /approvals/{{ customer.id }}",
            "body": {"amount": {"ref": "amount"}, "who": "{{ customer.name }}", "lines": [1, 2]},
            "query": {"dry": True},
            "headers": {"X-Note": "{{ note }}"},
            "outputs": {"ticket": "body.id", "http_status": "status", "trace": "headers.X-Trace"},
            "retry": {"attempts": 3, "backoff": 0.25},
            "timeout": 5,
            "next": "credit",
            "fault": "failed",
        },
        "credit": {
            "type": "subflow",
            "flow": "credit-check",
            "inputs": {"amount": {"ref": "amount"}},
            "outputs": {"score": "score"},
            "next": "route",
            "fault": "failed",
        },
        "route": {
            "type": "decision",
            "outcomes": [
                {
                    "id": "auto",
                    "next": "pause",
                    "when": {
                        "all": [
                            {"left": {"ref": "score"}, "op": "gte", "right": 600},
                            {"not": {"left": {"ref": "note"}, "op": "is_empty", "right": True}},
                        ]
                    },
                },
                {"id": "manual", "next": "manager"},
            ],
        },
        "manager": {
            "type": "page",
            "title": "Invoice from {{ customer.name }}",
            "content": "Amount {{ amount }}",
            "fields": [
                {"value": "note", "label": "Comment"},
                {"value": "amount", "label": "Amount", "required": True},
            ],
            "outcomes": [
                {"id": "approve", "label": "Approve", "next": "pause"},
                {"id": "reject", "label": "Reject", "next": "failed"},
            ],
        },
        "pause": {"type": "wait", "seconds": 60, "next": "confirm"},
        "confirm": {
            "type": "step",
            "content": "Approved {{ amount }}",
            "outcomes": [{"id": "ok", "label": "OK", "next": "until"}],
        },
        "until": {"type": "wait", "until": {"ref": "due"}, "next": "done"},
        "done": {"type": "end"},
        "failed": {"type": "end", "status": "failed", "message": "Failed: {{ fault.message }}"},
    },
}


def parse(doc: Mapping[str, Any]) -> Flow:
    return parse_flow(dict(doc))


@dataclass
class Driver:
    """One engine and one run, fed events at a fixed time with fixed secrets."""

    flow: Flow
    max_steps: int = 10_000
    secrets: dict[str, str] = field(default_factory=lambda: {"erp-token": SECRET})
    now: datetime = NOW
    engine: Engine = field(init=False)
    steps: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine = Engine(self.flow, max_steps=self.max_steps)

    @classmethod
    def of(cls, doc: Mapping[str, Any], **options: Any) -> Driver:
        return cls(parse(doc), **options)

    def start(self, inputs: Mapping[str, Any] | None = None, *, run_id: str = "r1") -> Step:
        step = self.engine.start(run_id, inputs or {}, now=self.now, secrets=self.secrets)
        self.steps.append(step)
        return step

    def feed(self, state: RunState, event: Event) -> Step:
        step = self.engine.feed(state, event, now=self.now, secrets=self.secrets)
        self.steps.append(step)
        return step

    def result(self, state: RunState) -> dict[str, Any]:
        return self.engine.result(state)

    def reload(self, state: RunState) -> RunState:
        """The state as the store gives it back."""
        return RunState.from_json(state.to_json(), self.flow)
