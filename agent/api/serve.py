"""The local API on its listener, for the daemon's supervisor to start and stop.

``api_token(settings)`` decides how the API authenticates (see docs/api.md):
a token file when one is configured or exists, else open on loopback only;
bound beyond loopback without a token, the agent refuses to start
(``ConfigError``, exit 78) and says how to make one.

``ApiServer`` binds before the agent reports ready (a taken port stops the
start, plainly), and stops in two steps: the listener closes, then requests
in flight get up to ``grace`` seconds (their runs' last steps are committed
either way, so whatever is cut short resumes on the next start).

A connection must deliver a complete request head within ``header_timeout``
seconds of opening or of its previous response, else it is closed: this
also closes idle keep-alive connections, and with the app's body deadline
(``create_app(body_timeout=)``) no client can hold a connection by sending
slowly.  A request refused before its body was read closes its connection
after at most ``linger`` more seconds.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Final

from aiohttp import web

from agent.errors import ConfigError, OperationError
from agent.settings import Settings, parse_listen

from .auth import TOKEN_FILE, TokenFile, is_loopback_host

log = logging.getLogger("flow_agent.api")

URL_META: Final = "api.url"  # where the daemon records the URL it listens on
_CUT_SHORT: Final = 0.01  # seconds a forced stop gives handlers (0 would mean forever)
_CUT_SHORT_WAIT: Final = 5.0
HEADER_TIMEOUT: Final = 30.0
LINGER: Final = 5.0


def listen_address(settings: Settings) -> tuple[str, int]:
    return parse_listen(settings.api_listen)


def is_loopback(host: str) -> bool:
    return is_loopback_host(f"[{host}]" if ":" in host else host)


def token_path(settings: Settings) -> Path:
    """Where the API token is kept: ``api_token_file``, else ``STATE_DIR/api.token``."""
    return settings.api_token_file or settings.state_dir / TOKEN_FILE


def api_token(settings: Settings) -> TokenFile | None:
    """How the API authenticates: a token file, or None (open, on loopback only)."""
    host, _ = listen_address(settings)
    path = token_path(settings)
    if settings.api_token_file is not None or path.exists():
        return TokenFile(path)
    if is_loopback(host):
        return None
    raise ConfigError(
        f"the local API is to listen on {settings.api_listen}, beyond loopback, and there is"
        f" no API token ({path} does not exist)",
        hint="create one with 'flow-agent api-token' (it prints the token your clients send"
        " as 'Authorization: Bearer <token>'), or set api_token_file; or listen on"
        " 127.0.0.1:8355",
    )


def public_url(settings: Settings, bound: str) -> str:
    """Where connector services call back: ``api_public_url``, else the bound URL."""
    return (settings.api_public_url or bound).rstrip("/")


class ApiServer:
    """One aiohttp application on one TCP listener."""

    def __init__(
        self,
        app: web.Application,
        *,
        host: str,
        port: int,
        grace: float,
        header_timeout: float = HEADER_TIMEOUT,
        linger: float = LINGER,
    ) -> None:
        self.host = host
        self.port = port
        self.url: str | None = None
        # aiohttp's keep-alive timer runs from the connection's start and from
        # each response, and closes a connection still waiting for a whole
        # request head: that is the head deadline (its default is an hour).
        # A refusal sent before the body was read (401, 408, 413) is followed by
        # up to ``linger`` seconds of reading and dropping the rest, so the
        # client sees the answer rather than a reset; then the connection closes.
        self._runner = web.AppRunner(
            app,
            shutdown_timeout=grace,
            access_log=None,
            keepalive_timeout=header_timeout,
            lingering_time=linger,
        )
        self._started = False

    async def start(self) -> str:
        """Bind and serve; returns the URL (with the port chosen for port 0)."""
        await self._runner.setup()
        self._started = True
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            raise OperationError(
                f"the local API cannot listen on {where}: {exc.strerror or exc}",
                hint="another process may hold the port (another flow-agent?); choose another"
                " with api_listen (FLOW_AGENT_API_LISTEN=HOST:PORT)",
            ) from None
        port = self.port
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                port = int(address[1])
                break
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{port}"
        return self.url

    async def stop(self, *, force: asyncio.Event | None = None, grace: float | None = None) -> None:
        """Close the listener, let requests in flight finish (up to the grace
        period, or ``grace`` seconds when given), or cut them short at once
        when ``force`` is set."""
        if not self._started:
            return
        if force is None and grace is None:
            await self._runner.cleanup()
        else:
            await self._stop(force or asyncio.Event(), grace)
        # Only now: a stop cut short by cancellation is done again by the next call.
        self._started = False

    async def _stop(self, force: asyncio.Event, grace: float | None) -> None:
        cleanup = asyncio.ensure_future(self._runner.cleanup())
        forced = asyncio.ensure_future(force.wait())
        try:
            # Past ``grace`` the stop is cut short like a forced one.
            await asyncio.wait(
                {cleanup, forced}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            forced.cancel()
            if not cleanup.done():
                cleanup.cancel()
            await asyncio.gather(cleanup, forced, return_exceptions=True)
        if cleanup.cancelled():
            # Forced: cancel the handlers still running (their runs' last steps
            # are committed), close their connections, then finish the cleanup.
            try:
                async with asyncio.timeout(_CUT_SHORT_WAIT):
                    server = self._runner.server
                    if server is not None:
                        await server.shutdown(_CUT_SHORT)
                    await self._runner.cleanup()
            except TimeoutError:
                log.warning("the local API did not stop in time; leaving it to the exit")


__all__ = [
    "HEADER_TIMEOUT",
    "URL_META",
    "ApiServer",
    "api_token",
    "listen_address",
    "public_url",
    "token_path",
]
