"""Helpers of the connector tests: a name table standing in for DNS, a recording sleep.

``free_port`` is the shared one of ``tests.support.net``, named here for these tests.
"""

from __future__ import annotations

import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from agent.connectors.base import ConnectorRequest, RetryPolicy
from tests.support.net import free_port


class RecordingSleep:
    """Stands in for asyncio.sleep: records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class NameTable(AbstractResolver):
    """A resolver answering from a fixed table, as DNS would, without a network."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in self.names[host]
        ]

    async def close(self) -> None:
        pass


def request(
    base_url: str,
    action: str,
    *,
    attempts: int = 1,
    backoff: float = 0.5,
    **fields: Any,
) -> ConnectorRequest:
    return ConnectorRequest(
        run_id="r_test",
        element="notify",
        connector="erp",
        connector_type="http",
        config={"base_url": base_url},
        action=action,
        retry=RetryPolicy(attempts=attempts, backoff=backoff),
        idempotency_key=fields.pop("idempotency_key", "r_test:notify:1"),
        timeout=fields.pop("timeout", 5.0),
        **fields,
    )


__all__ = ["NameTable", "RecordingSleep", "free_port", "request"]
