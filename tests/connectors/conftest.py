"""Fixtures of the connector tests: real local HTTP servers and connectors."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from agent.connectors.guard import NetworkGuard
from agent.connectors.http import HttpConnector
from tests.support.net import LocalServer, serve_app

from .helpers import RecordingSleep

Serve = Callable[..., Awaitable[str]]  # (app, *, ssl_context=None) -> base URL


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an aiohttp app on 127.0.0.1, port 0 (TLS when given a context); its base URL."""
    servers: list[LocalServer] = []

    async def start(app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> str:
        # Handlers are cancelled when the client goes away, so hanging handlers
        # end with the test instead of holding up the cleanup.
        server = await serve_app(
            app, ssl_context=ssl_context, handler_cancellation=True, shutdown_timeout=1.0
        )
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def make_connector(
    sleep: RecordingSleep,
) -> AsyncIterator[Callable[..., HttpConnector]]:
    made: list[HttpConnector] = []

    def make(*, guard: NetworkGuard | None = None, **options: Any) -> HttpConnector:
        connector = HttpConnector(guard=guard or NetworkGuard(), sleep=sleep, **options)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        await connector.close()
