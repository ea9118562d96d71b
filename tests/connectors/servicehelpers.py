"""Helpers of the service connector tests: the example service, requests, counting."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web

from agent.connectors.base import ConnectorRequest, RetryPolicy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_service() -> ModuleType:
    """examples/connector-service/service.py, imported from its file."""
    name = "flow_agent_example_service"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, EXAMPLES / "connector-service" / "service.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def counting(app: web.Application) -> Counter[str]:
    """Count the requests ``app`` gets, by path."""
    hits: Counter[str] = Counter()

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        hits[request.path] += 1
        return await handler(request)

    app.middlewares.append(count)
    return hits


def service_request(
    url: str,
    action: str,
    inputs: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    attempts: int = 1,
    redact: tuple[str, ...] = (),
    run_id: str = "r_svc",
    visit: int = 3,
) -> ConnectorRequest:
    return ConnectorRequest(
        run_id=run_id,
        element="ask",
        connector="approvals",
        connector_type="service",
        config={"url": url},
        action=action,
        headers=headers or {},
        inputs=inputs,
        timeout=5.0,
        retry=RetryPolicy(attempts=attempts, backoff=0.5),
        idempotency_key=f"{run_id}:{visit}",
        redact=redact,
        visit=visit,
    )
