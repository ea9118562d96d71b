"""What the runner hands a connector, and what it gets back.

The engine (``agent.flow``) renders a message element into a
``ConnectorRequest``; the runner gives it to the connector registered for
``connector_type``; the connector answers with a ``ConnectorResult``.  The
dataclasses live in the pure core (``agent.flow.commands``) and are
re-exported here for connector implementations.
"""

from __future__ import annotations

from typing import Protocol

from agent.flow.commands import ConnectorRequest, ConnectorResult, RetryPolicy

__all__ = ["Connector", "ConnectorRequest", "ConnectorResult", "RetryPolicy"]


class Connector(Protocol):
    """A connector type.  One instance serves every call of its type."""

    async def call(self, request: ConnectorRequest) -> ConnectorResult: ...

    async def close(self) -> None: ...
