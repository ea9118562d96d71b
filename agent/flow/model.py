"""flow/v1 documents: the parsed model and its validation.

``parse_flow(doc)`` returns a frozen ``Flow`` with every template and
expression compiled, or raises ``FlowInvalid`` listing *all* problems of the
document, each with the path where it is (``elements.notify.next``).  It never
raises anything else, whatever JSON it is given.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import values as V
from .expressions import Compiled

SLUG: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VALUE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONNECTOR_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HTTP_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
FORMAT: Final = "flow/v1"

__all__ = [
    "Connector",
    "Element",
    "Field",
    "Flow",
    "FlowInvalid",
    "Issue",
    "Operand",
    "Operation",
    "Outcome",
    "Rule",
    "ValueDef",
    "canonical_json",
    "flow_sha256",
    "parse_flow",
]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem of a document: where (``elements.notify.next``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class FlowInvalid(Exception):
    """The document is not a valid flow/v1 definition."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{i.path}: {i.message}" for i in issues))


@dataclass(frozen=True, slots=True)
class Operand:
    """``kind`` is ref, expr, literal or template."""

    kind: str
    value: Any = None  # literal value, or the ref path as a tuple
    compiled: Compiled | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """``op`` is a comparison, or ``all``/``any``/``not`` over ``rules``."""

    op: str
    left: Operand | None = None
    right: Operand | None = None
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    next: str
    id: str | None = None
    label: str | None = None
    when: Rule | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    op: str  # set add subtract multiply divide append clear
    target: str
    path: tuple[str | int, ...]
    operand: Operand | None = None


@dataclass(frozen=True, slots=True)
class Field:
    value: str
    label: str
    required: bool


@dataclass(frozen=True, slots=True)
class ValueDef:
    name: str
    type: str
    access: str = "private"
    default: Any = None
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class Connector:
    name: str
    type: str
    config: Mapping[str, Any]
    headers: Mapping[str, Any] = field(default_factory=dict)  # render tree
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Element:
    id: str
    type: str
    label: str | None = None
    next: str | None = None
    fault: str | None = None
    outcomes: tuple[Outcome, ...] = ()
    operations: tuple[Operation, ...] = ()
    # message
    connector: str | None = None
    action: str | None = None
    action_path: Compiled | None = None
    body: Any = None
    query: Any = None
    headers: Any = None
    inputs: Any = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    retry_attempts: int = 1
    retry_backoff: float = 0.5
    timeout: float | None = None
    # page / step
    title: Operand | None = None
    content: Operand | None = None
    fields: tuple[Field, ...] = ()
    # wait
    seconds: Operand | None = None
    until: Operand | None = None
    # subflow
    flow: str | None = None
    # end
    status: str = "completed"
    message: Operand | None = None


@dataclass(frozen=True, slots=True)
class Trigger:
    schedule: str | None = None
    timezone: str | None = None
    webhook: bool = False
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class Flow:
    id: str
    version: int
    name: str | None
    start: str
    values: Mapping[str, ValueDef]
    connectors: Mapping[str, Connector]
    elements: Mapping[str, Element]
    triggers: tuple[Trigger, ...]
    definition: Mapping[str, Any]
    sha256: str

    @property
    def inputs(self) -> tuple[ValueDef, ...]:
        return tuple(v for v in self.values.values() if v.access in V.INPUT_ACCESS)

    @property
    def secret_names(self) -> frozenset[str]:
        return frozenset(v.name for v in self.values.values() if v.type == "secret")


def canonical_json(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# Recently compiled flows by the sha256 of their canonical JSON.  Plain dict
# operations, each atomic, so any thread may use it; when full it starts over.
_RECENT: dict[str, Flow] = {}
_RECENT_MAX: Final = 16


def parse_flow(doc: object) -> Flow:
    """Validate and compile a flow/v1 document (already decoded from JSON).

    Safe from any thread.  A document compiled recently (same canonical
    content) is not compiled again: a large flow takes a second to compile,
    so the link compiles it off the event loop first, and then the sync, the
    catalog and the scheduler each find it here.  Flows are immutable, and a
    cached one owns a copy of its document (in the document's own order).
    """
    from .parse import parse_flow as parse  # the grammar lives in its own module

    try:
        key = flow_sha256(doc) if isinstance(doc, dict) else None
        own = json.loads(json.dumps(doc)) if key is not None else None
    except (TypeError, ValueError, RecursionError):  # let the parser say what is wrong
        key = own = None
    if key is None:
        return parse(doc)
    found = _RECENT.get(key)
    if found is not None:
        return found
    flow = parse(own)
    if len(_RECENT) >= _RECENT_MAX:
        _RECENT.clear()
    _RECENT[key] = flow
    return flow


def flow_sha256(doc: Any) -> str:
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()
