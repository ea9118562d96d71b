"""Where and how the agent may connect: URL checks, TLS, proxies, redirects.

The agent talks only to the control plane it was paired with:

* TLS is verified (system CAs, or ``ca_file`` for a private CA), hostname
  included.  There is no switch that turns verification off.
* ``http://`` / ``ws://`` are refused unless the host is loopback, or the
  ``allow_plaintext`` setting says so (then a warning is logged).
* A redirect to another host is refused (regional data stays in its region);
  a redirect that drops TLS is refused too.
* ``HTTPS_PROXY`` (and ``NO_PROXY``) are honoured, by websockets for the
  link and by aiohttp for pairing.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, SecurityError

from agent import __version__
from agent.errors import OperationError, UsageError

log = logging.getLogger("flow_agent.link")

CONNECT_PATH: Final = "/agent/v1/connect"
PAIR_PATH: Final = "/agent/v1/pair"
USER_AGENT: Final = f"flow-agent/{__version__}"


class PlaintextRefused(OperationError):
    """A plaintext URL to a host that is not loopback, without ``allow_plaintext``."""


class RedirectRefused(SecurityError):
    """The control plane answered with a redirect the agent will not follow."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(url: str, *, allow_plaintext: bool) -> bool:
    """Refuse (or warn about) a plaintext URL; returns True when the URL is encrypted."""
    parts = urlsplit(url)
    if parts.scheme in ("https", "wss"):
        return True
    host = parts.hostname or ""
    if is_loopback(host):
        return False
    if not allow_plaintext:
        raise PlaintextRefused(
            f"refusing plaintext {parts.scheme}:// to {host}, which is not a loopback address:"
            " the pairing token and every flow would cross the network unencrypted",
            hint="give the control plane a TLS certificate (https://), or set allow_plaintext"
            " (--allow-plaintext, FLOW_AGENT_ALLOW_PLAINTEXT=true) on a network you trust",
        )
    log.warning(
        "plaintext connection to %s allowed by allow_plaintext: traffic is not encrypted", host
    )
    return False


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: the system CAs, or only those in ``ca_file``."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"cannot load CA file {ca_file}: {exc}",
            hint="ca_file must be a PEM file of CA certificates",
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def link_url(base: str) -> str:
    """``https://cp:8700/x`` -> ``wss://cp:8700/x/agent/v1/connect``."""
    parts = urlsplit(base)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + CONNECT_PATH, "", ""))


def endpoint(base: str, path: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def same_host(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname or "").lower() == (pb.hostname or "").lower() and (
        pa.port or _default_port(pa.scheme)
    ) == (pb.port or _default_port(pb.scheme))


def _default_port(scheme: str) -> int:
    return 443 if scheme in ("https", "wss") else 80


class LinkConnection(ClientConnection):
    """The link's connection; remembers when bytes last arrived (``loop.time()``).

    The heartbeat reads it: a link busy delivering a large frame is alive even
    when the pong to a ping waits behind that frame.
    """

    last_received: float | None = None

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        super().data_received(data)


class _Connect(connect):
    """websockets' connect, refusing redirects to another host or without TLS."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        if isinstance(exc, InvalidStatus) and "Location" in exc.response.headers:
            target = urljoin(self.uri, exc.response.headers["Location"])
            if not same_host(self.uri, target):
                return RedirectRefused(
                    f"the control plane redirected the link to another host ({target});"
                    " the agent talks only to the URL it was paired with"
                )
        return super().process_redirect(exc)


async def open_link(
    url: str,
    *,
    ca_file: Path | None,
    max_frame_bytes: int,
    open_timeout: float,
) -> ClientConnection:
    """Open the websocket to ``url`` (``ws(s)://``); heartbeats are the caller's."""
    kwargs: dict[str, Any] = {}
    if urlsplit(url).scheme == "wss":
        kwargs["ssl"] = ssl_context(ca_file)
    return await _Connect(
        url,
        # Room above the protocol limit, so an oversized frame is refused with
        # an ``error`` by the session instead of closing the link.
        max_size=2 * max_frame_bytes,
        compression=None,  # no inflate bombs; frames are small JSON
        open_timeout=open_timeout,
        ping_interval=None,
        ping_timeout=None,
        close_timeout=5,
        user_agent_header=USER_AGENT,
        proxy=True,
        create_connection=LinkConnection,
        **kwargs,
    )


__all__ = [
    "CONNECT_PATH",
    "PAIR_PATH",
    "USER_AGENT",
    "LinkConnection",
    "PlaintextRefused",
    "RedirectRefused",
    "check_plaintext",
    "endpoint",
    "is_loopback",
    "link_url",
    "open_link",
    "same_host",
    "ssl_context",
]
