"""Helpers of the sql connector tests: requests, and a flow run through a real runner."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.connectors.base import ConnectorRequest, RetryPolicy
from agent.connectors.registry import default_registry
from agent.flow.model import parse_flow
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore


def sql_request(
    dsn: str,
    action: str,
    inputs: Mapping[str, Any] | None = None,
    *,
    timeout: float = 5.0,
    attempts: int = 1,
    redact: tuple[str, ...] = (),
    **config: Any,
) -> ConnectorRequest:
    return ConnectorRequest(
        run_id="r_sql",
        element="load",
        connector="db",
        connector_type="sql",
        config={"dsn": dsn, **config},
        action=action,
        inputs=inputs,
        timeout=timeout,
        retry=RetryPolicy(attempts=attempts, backoff=0.01),
        idempotency_key="r_sql:1",
        redact=redact,
        visit=1,
    )


def sql_flow(connector: dict[str, Any]) -> dict[str, Any]:
    """Look a customer up, then count an update: two sql elements and a fault path."""
    return {
        "format": "flow/v1",
        "id": "customers",
        "values": {
            "cid": {"type": "number", "access": "input"},
            "customer": {"type": "object", "access": "output"},
            "balance": {"type": "number", "access": "output"},
            "rows": {"type": "list", "access": "output"},
            "updated": {"type": "number", "access": "output"},
            "problem": {"type": "string", "access": "output"},
        },
        "connectors": {"db": connector},
        "start": "load",
        "elements": {
            "load": {
                "type": "message",
                "connector": "db",
                "action": "query SELECT id, name, balance FROM customers WHERE id >= :cid "
                "ORDER BY id",
                "inputs": {"cid": {"ref": "cid"}},
                "outputs": {"customer": "first", "rows": "rows"},
                "next": "pick",
                "fault": "failed",
            },
            "pick": {
                "type": "operator",
                "operations": [{"set": "balance", "to": {"ref": "customer.balance"}}],
                "next": "touch",
            },
            "touch": {
                "type": "message",
                "connector": "db",
                "action": "execute UPDATE customers SET name = name WHERE id >= :cid",
                "inputs": {"cid": {"ref": "cid"}},
                "outputs": {"updated": "row_count"},
                "next": "done",
                "fault": "failed",
            },
            "failed": {
                "type": "operator",
                "operations": [{"set": "problem", "to": {"ref": "fault.message"}}],
                "next": "end_failed",
            },
            "end_failed": {"type": "end", "status": "failed", "message": "{{ problem }}"},
            "done": {"type": "end"},
        },
    }


async def run_flow(
    state_dir: Path,
    doc: dict[str, Any],
    inputs: Mapping[str, Any],
    *,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    store = SqliteStore.open(state_dir, synchronous="off")
    registry = default_registry(secrets=secrets, state_dir=state_dir, plugins=False)
    try:
        runner = Runner(
            store=store,
            catalog=Catalog(store, local=[parse_flow(doc)]),
            connectors=registry,
            secrets=secrets or {},
        )
        return await runner.start(doc["id"], inputs)
    finally:
        await registry.close_all()
        store.close()
