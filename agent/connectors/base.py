"""What the runner hands a connector, and what it gets back.

The engine (``agent.flow``) renders a message element into a
``ConnectorRequest``; the runner gives it to the connector registered for
``connector_type``; the connector answers with a ``ConnectorResult``.  Neither
dataclass is mutated after it is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorResult:
    ok: bool  # True: take ``next``; False: take ``fault``
    status: int | None = None  # HTTP status, None when there was no response
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    body: Any = None  # parsed JSON body (None for an empty body)
    outputs: Mapping[str, Any] | None = None  # for connector types that return named outputs
    message: str = ""  # for a fault: what went wrong, for a person; secrets redacted
    attempts: int = 1


class Connector(Protocol):
    """A connector type.  One instance serves every call of its type."""

    async def call(self, request: ConnectorRequest) -> ConnectorResult: ...

    async def close(self) -> None: ...
