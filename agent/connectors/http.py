"""The ``http`` connector: one JSON request per message element visit.

``HttpConnector.call`` never raises for anything the network or the peer
does: every outcome is a ``ConnectorResult``.  Its choices, for the flow
format's message elements:

* URL: the connector's ``base_url`` joined to the rendered path with exactly
  one slash; only http and https.  The query is appended; booleans are sent
  as ``true``/``false``, numbers in plain decimal form, ``null`` items left
  out, lists as repeated keys and objects as compact JSON.
* Every try carries the same ``Idempotency-Key`` header.
* Retries (``request.retry``) happen only after connection errors, timeouts,
  429 and 5xx.  Before try n+1 the connector sleeps ``backoff * 2**(n-1)``
  seconds; a ``Retry-After`` on a 429 or 503 lengthens that wait, but never
  beyond ``RETRY_AFTER_CAP`` (30 s): a longer stall belongs in a ``wait``
  element, not in a connector holding a run.
* ``request.timeout`` bounds each try as a whole: connect, redirects and
  reading the body.
* Redirects are followed by hand (at most ``MAX_REDIRECTS``), each hop
  re-checked by the network guard; only http and https targets, and never
  from https down to http; 303 (and
  301/302 after a POST) continue as GET without the body, as browsers do;
  the Authorization header is not carried to another origin.
* The response body is read in chunks and abandoned as soon as it passes
  ``max_response_bytes``; a Content-Length above the limit is refused before
  reading.  JSON numbers with a fraction are parsed as ``decimal.Decimal``.
* Every string of ``request.redact`` (and its URL-encoded forms) is replaced
  by ``***`` in messages and logs.  Logs carry method, URL without query or
  credentials, status and duration: never headers or bodies.

One aiohttp session (with one TLS context and one connection pool) serves
every call; it is created on first use, inside the running loop.  It ignores
proxy variables (a proxy would connect on our behalf, past the guard) and
keeps no cookies (one flow's cookies must not reach another's calls).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDict
from yarl import URL

from agent.connectors.base import ConnectorRequest, ConnectorResult
from agent.connectors.guard import NetworkGuard, NetworkRefused
from agent.connectors.http_wire import (
    JsonBodyError,
    Redactor,
    decode_json,
    describe_size,
    encode_json,
    query_pairs,
    retry_after_seconds,
)

log = logging.getLogger("flow_agent.connectors.http")

MAX_REDIRECTS = 5
RETRY_AFTER_CAP = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
USER_AGENT = "flow-agent"

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_SCHEMES = frozenset({"http", "https"})
_ORIGIN_BOUND_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")
_CHUNK = 64 * 1024

SessionFactory = Callable[[aiohttp.BaseConnector], aiohttp.ClientSession]
Sleep = Callable[[float], Awaitable[object]]


def default_session(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
    """The session the connector uses unless told otherwise.

    A factory receives the guarded connector so that no session can bypass it.
    """
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
        headers={"User-Agent": USER_AGENT},
    )


class _Refused(Exception):
    """A request that cannot or must not be made; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Try:
    """What one try ended with."""

    status: int | None = None
    headers: Mapping[str, str] | None = None
    body: Any = None
    ok: bool = False
    error: str = ""  # for a try without an answer: what went wrong
    message: str = ""  # a complete fault message that ends the call without a retry
    retryable: bool = False
    retry_after: float | None = None
    label: str = ""  # for the log line


class HttpConnector:
    """Executes ``http`` connector requests.  One instance serves every call."""

    def __init__(
        self,
        *,
        guard: NetworkGuard,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        session_factory: SessionFactory | None = None,
        sleep: Sleep = asyncio.sleep,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._guard = guard
        self._max_bytes = max_response_bytes
        self._session_factory = session_factory or default_session
        self._sleep = sleep
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._resolver: AbstractResolver | None = None
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._resolver = self._guard.resolver()
            connector = aiohttp.TCPConnector(
                resolver=self._resolver,
                ssl=self._ssl_context or ssl.create_default_context(),
                ttl_dns_cache=10,
            )
            self._session = self._session_factory(connector)
        return self._session

    async def call(self, request: ConnectorRequest) -> ConnectorResult:
        redact = Redactor(request.redact)
        try:
            return await self._call(request, redact)
        except Exception as exc:
            # A bug of ours must still end as a fault, not a traceback in the runner.
            log.error("http connector failed unexpectedly: %s", redact(repr(exc)))
            return ConnectorResult(
                ok=False,
                message=redact(f"the http connector failed unexpectedly ({type(exc).__name__})"),
            )

    async def _call(self, request: ConnectorRequest, redact: Redactor) -> ConnectorResult:
        if self._closed:
            return ConnectorResult(ok=False, message="the http connector is closed")
        try:
            method, url = _target(request)
            data = None if request.body is None else encode_json(request.body)
            if request.query:
                url = url.with_query([*url.query.items(), *query_pairs(request.query)])
        except (_Refused, JsonBodyError) as exc:
            return ConnectorResult(ok=False, message=redact(str(exc)))
        shown = redact(_display(url))
        headers = _headers(request, has_body=data is not None)
        attempts = max(1, request.retry.attempts)
        session = self._get_session()

        tried = 0
        outcome = _Try()
        for tried in range(1, attempts + 1):
            if tried > 1:
                delay = request.retry.backoff * 2 ** (tried - 2)
                if outcome.retry_after is not None:
                    delay = max(delay, min(outcome.retry_after, RETRY_AFTER_CAP))
                await self._sleep(delay)
            started = time.perf_counter()
            outcome = await self._try(
                session, method, url, headers, data, timeout=request.timeout, shown=shown
            )
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.log(
                logging.INFO if outcome.ok else logging.WARNING,
                "%s %s -> %s in %.0f ms (try %d of %d)",
                method,
                shown,
                outcome.label,
                elapsed_ms,
                tried,
                attempts,
            )
            if not outcome.retryable:
                break
        return _result(outcome, method=method, shown=shown, tried=tried, redact=redact)

    async def _try(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        data: bytes | None,
        *,
        timeout: float,
        shown: str,
    ) -> _Try:
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(session, method, url, headers, data)
        except NetworkRefused as exc:
            message = f"{method} {shown} refused: {exc.message}"
            return _Try(message=message, label="refused by the network guard")
        except _Refused as exc:
            return _Try(message=f"{method} {shown} {exc}", label="refused")
        except TimeoutError:
            # Also aiohttp's own timeouts, which subclass TimeoutError.
            return _Try(error=f"no answer within {timeout:g} s", retryable=True, label="timeout")
        except aiohttp.ClientSSLError as exc:
            # A certificate does not get better by asking again.
            return _Try(error=f"TLS failed: {_tls_reason(exc)}", label="TLS error")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            return _Try(error=_connection_reason(exc), retryable=True, label="connection error")
        except (aiohttp.ClientError, ValueError) as exc:
            # Malformed responses, invalid header values and the like.
            return _Try(error=f"{type(exc).__name__}: {exc}", label="client error")

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        data: bytes | None,
    ) -> _Try:
        for hop in range(MAX_REDIRECTS + 1):
            # IP literals never reach the resolver, so they are checked here.
            self._guard.check_host(url.raw_host or "")
            async with session.request(
                method, url, headers=headers, data=data, allow_redirects=False
            ) as response:
                location = response.headers.get("Location")
                if response.status not in _REDIRECT_STATUSES or location is None:
                    return await self._answer(method, url, response)
            if hop == MAX_REDIRECTS:
                raise _Refused(
                    f"failed: more than {MAX_REDIRECTS} redirects, the last to {_display(url)}"
                )
            target = _redirect_target(url, location)
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method = "GET" if method != "HEAD" else method
                data = None
                headers = headers.copy()
                headers.popall("Content-Type", None)
            if target.origin() != url.origin():
                headers = headers.copy()
                for name in _ORIGIN_BOUND_HEADERS:
                    headers.popall(name, None)
            url = target
        raise AssertionError("unreachable: the loop returns or raises")

    async def _answer(self, method: str, url: URL, response: aiohttp.ClientResponse) -> _Try:
        status = response.status
        headers = _lowered(response.headers)
        raw = await self._read_bounded(method, response)
        label = f"{status}"
        if 200 <= status < 300:
            if raw is None:
                message = f"{method} {_display(url)}: {self._too_large()}"
                return _Try(status=status, headers=headers, message=message, label=label)
            try:
                body = decode_json(raw)
            except ValueError as exc:
                message = f"response from {method} {_display(url)} is not JSON: {exc}"
                return _Try(status=status, headers=headers, message=message, label=label)
            return _Try(status=status, headers=headers, body=body, ok=True, label=label)
        body = None
        if raw is not None:
            try:
                body = decode_json(raw)
            except ValueError:
                body = None
        retry_after = None
        if status in _RETRY_AFTER_STATUSES:
            retry_after = retry_after_seconds(headers.get("retry-after"), now=time.time())
        return _Try(
            status=status,
            headers=headers,
            body=body,
            retryable=status == 429 or status >= 500,
            retry_after=retry_after,
            label=label,
        )

    async def _read_bounded(self, method: str, response: aiohttp.ClientResponse) -> bytes | None:
        """The body, or None when it is larger than the limit (then left unread)."""
        if method == "HEAD" or response.status in (204, 304):
            return b""
        length = response.content_length
        if length is not None and length > self._max_bytes:
            response.close()
            return None
        buffer = bytearray()
        while chunk := await response.content.read(_CHUNK):
            if len(buffer) + len(chunk) > self._max_bytes:
                # Dropping the connection stops the peer; reading on would not.
                response.close()
                return None
            buffer += chunk
        return bytes(buffer)

    def _too_large(self) -> str:
        return f"response exceeds the {describe_size(self._max_bytes)} limit"


def _result(
    outcome: _Try, *, method: str, shown: str, tried: int, redact: Redactor
) -> ConnectorResult:
    tries = f"{tried} {'try' if tried == 1 else 'tries'}"
    if outcome.ok:
        message = ""
    elif outcome.message:
        message = outcome.message
    elif outcome.status is not None:
        message = f"{method} {shown} answered {outcome.status} {_phrase(outcome.status)}"
        message += f" after {tries}"
    else:
        message = f"{method} {shown} failed after {tries}: {outcome.error}"
    return ConnectorResult(
        ok=outcome.ok,
        status=outcome.status,
        headers=outcome.headers or {},
        body=outcome.body,
        message=redact(message),
        attempts=tried,
    )


def _target(request: ConnectorRequest) -> tuple[str, URL]:
    method, _, path = request.action.strip().partition(" ")
    method = method.upper()
    path = path.strip()
    if not method.isascii() or not method.isalpha():
        raise _Refused(f"action {request.action!r} does not start with an HTTP method")
    base = request.config.get("base_url")
    if not isinstance(base, str) or not base:
        raise _Refused(f"connector {request.connector} has no base_url")
    try:
        base_url = URL(base)
        url = URL(base.rstrip("/") + "/" + path.lstrip("/")) if path else base_url
    except ValueError as exc:
        raise _Refused(f"connector {request.connector}: invalid URL ({exc})") from exc
    if base_url.scheme not in _SCHEMES or not base_url.raw_host:
        raise _Refused(
            f"connector {request.connector}: base_url must be an http or https URL "
            f"with a host, not {_display(base_url)}"
        )
    if url.origin() != base_url.origin():
        raise _Refused(f"the path of action {request.action!r} changes the host")
    return method, url


def _headers(request: ConnectorRequest, *, has_body: bool) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(request.headers)
    headers.setdefault("Accept", "application/json")
    if has_body:
        headers["Content-Type"] = "application/json"
    if request.idempotency_key:
        headers["Idempotency-Key"] = request.idempotency_key
    return headers


def _redirect_target(url: URL, location: str) -> URL:
    try:
        target = url.join(URL(location))
    except ValueError as exc:
        raise _Refused(f"failed: redirected to an invalid URL ({exc})") from exc
    if target.scheme not in _SCHEMES:
        shown = f"{target.scheme}:" if target.scheme else repr(location)
        raise _Refused(f"refused: redirected to a {shown} URL; only http and https are allowed")
    if not target.raw_host:
        raise _Refused("refused: redirected to a URL without a host")
    if url.scheme == "https" and target.scheme == "http":
        # The body and headers were meant for an encrypted channel.
        raise _Refused(f"refused: redirected from https to plain http ({_display(target)})")
    return target


def _display(url: URL) -> str:
    """The URL for people and logs: no credentials, no query, no fragment."""
    if url.raw_user is not None or url.raw_password is not None:
        url = url.with_user(None)
    return str(url.with_query(None).with_fragment(None))


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        lowered[key] = f"{lowered[key]}, {value}" if key in lowered else value
    return lowered


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _os_reason(exc: aiohttp.ClientError) -> str:
    error = getattr(exc, "os_error", None)
    if isinstance(error, OSError):
        if error.errno and error.errno > 0:
            return os.strerror(error.errno)
        if error.strerror:
            return error.strerror
    return str(exc) or type(exc).__name__


def _tls_reason(exc: aiohttp.ClientSSLError) -> str:
    error = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate not accepted ({error.verify_message})"
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    return str(error or exc)


def _connection_reason(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {exc.host} ({_os_reason(exc)})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({_os_reason(exc)})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response body was cut off"
    return f"connection failed ({type(exc).__name__}: {exc})"
