"""The local API as an aiohttp application: health, metrics, runs, player.

``create_app`` builds a self-contained ``web.Application``; the daemon mounts
it on its listener (``web.AppRunner(app)``), tests run it on 127.0.0.1.

Middlewares, outermost first:

1. count every request by route template, method and status;
2. turn every error into RFC 9457 problem details (an HTML page under
   ``/ui/``), never a traceback;
3. authenticate and refuse cross-site requests (see ``docs/api.md``);
4. refuse unknown query parameters;
5. read the body within ``body_timeout`` (408 and the connection closed
   otherwise), so a client trickling a body cannot hold a connection and
   a handler for ever.  Slow request heads are the listener's business
   (``serve.ApiServer``'s ``header_timeout``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware

from agent.errors import AgentError, StoreError
from agent.runtime.callbacks import CallbackIssuer
from agent.runtime.runner import Runner

from . import player, routes
from .auth import SESSION_COOKIE, bearer, is_loopback_host, same_secret, session_value
from .context import CONTEXT, Context
from .metrics import Metrics
from .openapi import OPENAPI
from .problems import HTTP_CODES, Problem, from_problem, problem_response

log = logging.getLogger("flow_agent.api")

MAX_BODY = 1024 * 1024
BODY_TIMEOUT = 30.0  # seconds a whole request body may take to arrive
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_PATHS = frozenset({"/livez", "/readyz"})
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Parsing the Host header as an IP address costs more than the rest of the
# check; clients send the same few values.  Bounded: the header is the client's.
_loopback_host = functools.lru_cache(maxsize=64)(is_loopback_host)


def _always_ready() -> bool:
    return True


def _fixed(token: str | None) -> Callable[[], str | None]:
    return lambda: token


def create_app(
    *,
    runner: Runner,
    token: str | Callable[[], str | None] | None = None,
    ready: Callable[[], bool | str] = _always_ready,
    metrics: Metrics | None = None,
    secrets: Mapping[str, str] | None = None,
    max_body: int = MAX_BODY,
    callbacks: CallbackIssuer | None = None,
    accepting: Callable[[], bool | str] | None = None,
    body_timeout: float = BODY_TIMEOUT,
) -> web.Application:
    """The local API and player page around ``runner`` (and its store and catalog).

    ``token``: when set, every route but ``/livez`` and ``/readyz`` needs
    ``Authorization: Bearer <token>`` (the player also takes its session
    cookie); when None the app answers only requests whose Host is loopback.
    A callable (``auth.TokenFile``) is asked on every request, so a rotated
    token applies at once.  ``ready()`` returns True when the agent is
    ready, else False or the reason.  ``metrics`` is the registry
    ``/metrics`` serves; give the same object to the ``Runner`` as its
    observer (``metrics.wrap(other)``) so runs are counted.  ``secrets``
    (default: the runner's) holds the webhook signing secrets.  Bodies larger
    than ``max_body`` bytes are refused with 413.  ``callbacks`` checks the
    tokens of ``POST /api/v1/runs/{run_id}/callback`` (connector services
    answering late); without it that route answers 404.  Unless
    ``accepting()`` is True, new runs are refused with 503 and the code it
    gives instead (``draining`` while the agent stops, ``outbox_full``).
    A body that has not fully arrived ``body_timeout`` seconds after the
    request's head is refused with 408 and its connection closed.
    """
    ctx = Context(
        runner=runner,
        metrics=metrics or Metrics(),
        token_source=token if callable(token) else _fixed(token),
        ready=ready,
        secrets=runner.secrets if secrets is None else secrets,
        clock=runner.clock,
        callbacks=callbacks,
    )
    if accepting is not None:
        ctx.accepting = accepting
    app = web.Application(
        client_max_size=max_body,
        middlewares=[
            _count_requests,
            _problems(max_body),
            _authenticate,
            _known_query,
            _read_body(body_timeout),
        ],
    )
    app[CONTEXT] = ctx
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/", _to_player)
    routes.add_routes(app)
    player.add_routes(app)
    return app


# -- health and metrics ------------------------------------------------------------


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        answer = request.app[CONTEXT].ready()
    except Exception as exc:  # a broken probe means "not ready", not a 500
        answer = f"the readiness check failed: {type(exc).__name__}"
    if answer is True:
        return web.json_response({"status": "ready"})
    reason = answer if isinstance(answer, str) and answer else "not ready"
    return web.json_response({"status": "not_ready", "reason": reason}, status=503)


async def metrics_text(request: web.Request) -> web.Response:
    body, content_type = request.app[CONTEXT].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _to_player(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/ui/")


# -- middlewares -------------------------------------------------------------------


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def _count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[CONTEXT].metrics.request(
            route=_route_name(request), method=request.method, status=status
        )


def _problems(max_body: int) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            return _error(request, problem)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects
            detail = {
                404: f"no route {request.path}",
                405: f"{request.method} is not allowed on {request.path}",
                413: f"the body is larger than the limit of {max_body} bytes",
            }.get(exc.status, exc.reason)
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            code = HTTP_CODES.get(exc.status, "http_error")
            return _error(request, Problem(exc.status, code, detail, headers=headers))
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            log.error("store error on %s %s: %s", request.method, request.path, exc.message)
            return _error(request, Problem(503, "store_unavailable", exc.message))
        except AgentError as exc:
            log.error("%s %s failed: %s", request.method, request.path, exc.message)
            return _error(request, Problem(500, "internal", exc.message))
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return _error(
                request, Problem(500, "internal", "an unexpected error; the agent's log has it")
            )

    return middleware


def _error(request: web.Request, problem: Problem) -> web.Response:
    if player.is_player(request.path):
        return player.error_page(request, problem)
    return from_problem(problem, instance=request.path)


def _same_origin(value: str, request: web.Request) -> bool:
    """Whether an Origin or Referer names the host (and port) this request went to.

    The scheme is not compared, so that a proxy that ends TLS in front of the
    agent does not make every form post look cross-site.
    """
    _, sep, rest = value.partition("://")
    host = rest.split("/", 1)[0]
    return bool(sep) and host.lower() == request.host.lower()


def _cross_site(request: web.Request) -> bool:
    """An unsafe request that a page of another site may have made."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return not _same_origin(origin, request)
    if player.is_player(request.path):
        # A form post from a browser always carries Origin or Referer; refuse
        # the ambiguous case rather than guess.
        referer = request.headers.get("Referer")
        return referer is None or not _same_origin(referer, request)
    return False


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in _OPEN_PATHS:
        return await handler(request)
    ctx = request.app[CONTEXT]
    if request.method in _UNSAFE and _cross_site(request):
        raise Problem(403, "cross_site", "cross-site requests are refused (Origin does not match)")
    if routes.is_callback(request):
        # A connector service's callback carries its own single-use token (and
        # reaches the agent by api_public_url, whatever host name that has).
        return await handler(request)
    token = ctx.token
    if token is None:
        if not _loopback_host(request.host):
            raise Problem(
                403,
                "host_not_allowed",
                "without an API token this agent answers only requests to a loopback host",
            )
        return await handler(request)
    given = bearer(request.headers.get("Authorization"))
    if given is not None:
        if not same_secret(given, token):
            raise _unauthorized("the bearer token is not this agent's API token")
        return await handler(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if player.is_player(path) and cookie is not None and same_secret(cookie, session_value(token)):
        return await handler(request)
    if path.startswith(f"{routes.PREFIX}/hooks/") or player.is_public(path):
        return await handler(request)  # a signed webhook authenticates itself
    if player.is_player(path) and request.method in ("GET", "HEAD"):
        raise web.HTTPSeeOther(f"{player.LOGIN}?next={quote(request.path_qs, safe='')}")
    raise _unauthorized("this agent's API needs 'Authorization: Bearer <token>'")


def _query_names() -> dict[tuple[str, str], frozenset[str]]:
    """The query parameters each API operation declares in the OpenAPI document."""
    names: dict[tuple[str, str], frozenset[str]] = {}
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict):
                params = operation.get("parameters", [])
                names[(path, method.upper())] = frozenset(
                    p["name"] for p in params if isinstance(p, dict) and p.get("in") == "query"
                )
    return names


_QUERY_NAMES: Final = _query_names()


@web.middleware
async def _known_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A query parameter the API does not know is a mistake (``stauts=``): say so."""
    if request.query and request.path.startswith(routes.PREFIX):
        info = request.match_info
        resource = info.route.resource if info.route is not None else None
        known = _QUERY_NAMES.get((resource.canonical, request.method)) if resource else None
        if known is not None:
            unknown = sorted(set(request.query) - known)
            if unknown:
                raise Problem(
                    400,
                    "invalid_query",
                    f"unknown query parameter(s) {', '.join(map(repr, unknown))}"
                    + (f" (known: {', '.join(sorted(known))})" if known else ""),
                    errors=[
                        {"parameter": n, "detail": "not a parameter of this route"} for n in unknown
                    ],
                )
    return await handler(request)


def _read_body(timeout: float) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Read here, after authentication, so a stranger's body is never waited
        # for; aiohttp keeps it, and the handlers' read()/post() use that copy.
        # A body already all here (a small one comes with its head) needs no
        # timer: only one still arriving is waited for, within the bound.
        if request.can_read_body and not request.content.is_eof():
            try:
                async with asyncio.timeout(timeout):
                    await request.read()
            except TimeoutError:
                problem = Problem(
                    408,
                    "request_timeout",
                    f"the request body did not arrive within {timeout:g} s",
                )
                response = _error(request, problem)
                # Not kept alive: the rest of the body is read and dropped only
                # for the listener's short lingering time, then the connection
                # closes (closing at once would reset it and lose the answer).
                response.force_close()
                return response
        return await handler(request)

    return middleware


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


__all__ = ["BODY_TIMEOUT", "MAX_BODY", "Metrics", "create_app", "problem_response"]
