"""Loopback sockets and real aiohttp servers for tests."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on at ``host`` (bound, then released)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LocalServer:
    """An aiohttp app served by ``serve_app``; ``close()`` stops it."""

    runner: web.AppRunner
    port: int
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_app(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    **runner_options: Any,
) -> LocalServer:
    """Serve ``app`` on ``host:port`` (0: a free port) until ``close()``; TLS with a context."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1])
    name = f"[{host}]" if ":" in host else host
    return LocalServer(
        runner=runner, port=bound, url=f"{'https' if ssl_context else 'http'}://{name}:{bound}"
    )


@asynccontextmanager
async def serving(app: web.Application, **options: Any) -> AsyncIterator[LocalServer]:
    """``serve_app`` for the length of an ``async with``."""
    server = await serve_app(app, **options)
    try:
        yield server
    finally:
        await server.close()
