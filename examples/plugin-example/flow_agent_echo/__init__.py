"""The ``echo`` connector type: an example flow-agent connector plugin.

A flow declares ``{"type": "echo", "prefix": ">> "}`` and calls the actions
``greet``, ``upper`` and ``echo`` with ``inputs``; the outputs come back by
name.  Everything a plugin needs is here: the grammar, the connector, the
fault for an unknown action, and no I/O to undo at ``close``.
"""

from __future__ import annotations

from typing import Any

from agent.connectors.base import Connector, ConnectorRequest, ConnectorResult
from agent.connectors.plugins import ConnectorPlugin, ConnectorType, PluginContext

__version__ = "0.1.0"


class EchoPlugin(ConnectorPlugin):
    def grammar(self) -> ConnectorType:
        return ConnectorType(
            # The connector definition's keys ("type" always), and the
            # message element fields this type takes.
            config=("type", "prefix", "timeout"),
            required=(),
            element_fields=("inputs",),
        )

    def create(self, context: PluginContext) -> Connector:
        return EchoConnector(prefix_default="", context=context)


class EchoConnector:
    """One instance serves every call of the type, concurrently."""

    def __init__(self, *, prefix_default: str, context: PluginContext) -> None:
        self._prefix_default = prefix_default
        self._log = context.logger

    async def call(self, request: ConnectorRequest) -> ConnectorResult:
        inputs: dict[str, Any] = dict(request.inputs or {})
        prefix = request.config.get("prefix", self._prefix_default)
        if not isinstance(prefix, str):
            return ConnectorResult(ok=False, message="prefix must be text")
        if request.action == "greet":
            outputs: dict[str, Any] = {"greeting": f"{prefix}Hello, {inputs.get('name')}"}
        elif request.action == "upper":
            outputs = {k: str(v).upper() for k, v in inputs.items()}
        elif request.action == "echo":
            outputs = inputs
        else:
            # A fault the flow can route with "fault"; never an exception.
            return ConnectorResult(
                ok=False, message=f"echo has no action {request.action!r} (greet, upper, echo)"
            )
        # Log what happened, never the values (they may be business data).
        self._log.info("echo %s for run %s", request.action, request.run_id)
        return ConnectorResult(ok=True, outputs=outputs)

    async def close(self) -> None:
        return None
