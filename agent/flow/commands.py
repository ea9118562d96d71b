"""What the engine asks the outside world to do, and what it is fed back.

Commands and events are frozen and built with keywords.  ``ConnectorRequest``
and ``ConnectorResult`` are re-exported by ``agent.connectors.base`` for the
connector implementations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    attempts: int = 1  # total tries, including the first
    backoff: float = 0.5  # seconds before try 2; doubles for each further try


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorRequest:
    run_id: str
    element: str
    connector: str  # the connector's name in the flow
    connector_type: str  # "http", ...
    config: Mapping[str, Any]  # the connector's static settings (base_url, ...)
    action: str  # for http: "METHOD /path" with the path already rendered
    body: Any = None
    query: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, Any] | None = None
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    idempotency_key: str = ""
    # Strings that must never appear in a result message, a log or an error
    # (rendered secret values).  Connectors redact them.
    redact: tuple[str, ...] = ()
    visit: int = 0  # the element visit this call belongs to


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorResult:
    ok: bool  # True: take ``next``; False: take ``fault``
    status: int | None = None  # HTTP status, None when there was no response
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    body: Any = None  # parsed JSON body (None for an empty body)
    outputs: Mapping[str, Any] | None = None  # for connector types that return named outputs
    message: str = ""  # for a fault: what went wrong, for a person; secrets redacted
    attempts: int = 1
    wait: bool = False  # the connector answers later through a callback


# -- commands ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CallConnector:
    """Commit the run first, then call; feed back ``ConnectorDone``."""

    request: ConnectorRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class StartChild:
    """Start (or find, if it exists) the child run; feed back ``ChildFinished``."""

    element: str
    visit: int
    child_run_id: str
    flow_id: str
    inputs: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitUntil:
    """Feed ``TimerFired`` at or after ``until``."""

    until: datetime


Command = CallConnector | StartChild | WaitUntil


# -- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorDone:
    visit: int
    result: ConnectorResult


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildFinished:
    visit: int
    status: str  # completed, failed, cancelled
    outputs: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    outcome: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    state_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    reason: str = "cancelled"


Event = ConnectorDone | ChildFinished | TimerFired | Answer | Cancel
