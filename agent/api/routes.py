"""The JSON run API under ``/api/v1``: flows, runs, answers, webhooks."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from agent.flow import values as V
from agent.flow.commands import Answer
from agent.flow.engine import AnswerRefused, EngineMisuse, InputInvalid
from agent.flow.model import Flow
from agent.runtime.callbacks import CallbackRefused, complete_callback
from agent.runtime.runner import RunNotFound
from agent.store.base import RUN_STATUSES

from .auth import bearer, same_secret
from .context import (
    CONTEXT,
    MOVED_ON_CODES,
    Context,
    input_problems,
    is_json_type,
    parse_json,
    read_json,
    refused_field,
)
from .openapi import OPENAPI
from .problems import Problem
from .webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureRefused, verify

log = logging.getLogger("flow_agent.api")

PREFIX = "/api/v1"
MAX_LIMIT = 1000


def describe_flow(flow: Flow) -> dict[str, Any]:
    """A flow as ``GET /flows`` lists it (secret names stay inside)."""
    triggers: list[dict[str, Any]] = []
    for trigger in flow.triggers:
        if trigger.webhook:
            triggers.append({"kind": "webhook", "signed": trigger.secret is not None})
        elif trigger.schedule is not None:
            triggers.append(
                {"kind": "schedule", "schedule": trigger.schedule, "timezone": trigger.timezone}
            )
    return {
        "id": flow.id,
        "name": flow.name,
        "version": flow.version,
        "inputs": [
            {
                "name": value.name,
                "type": value.type,
                "access": value.access,
                "default": V.to_plain(V.normalize(value.default)),
            }
            for value in flow.inputs
        ],
        "triggers": triggers,
    }


def _bearer_ok(request: web.Request, token: str) -> bool:
    given = bearer(request.headers.get("Authorization"))
    return given is not None and same_secret(given, token)


def _context(request: web.Request) -> Context:
    return request.app[CONTEXT]


async def _body_object(request: web.Request, allowed: set[str], *, what: str) -> dict[str, Any]:
    """The JSON object a request carries, ``{}`` for no body at all."""
    body = await read_json(request)
    if body is None and (await request.read()).strip():
        # A literal null is a body, and not an object (no body is fine).
        raise Problem(422, "invalid_body", f"{what} must be a JSON object")
    return _object(body, allowed, what=what)


def _object(body: Any, allowed: set[str], *, what: str) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise Problem(422, "invalid_body", f"{what} must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(
            422,
            "invalid_body",
            f"unknown member(s) {', '.join(map(repr, unknown))} in {what} "
            f"(allowed: {', '.join(sorted(allowed))})",
            errors=[{"member": name, "detail": "not allowed here"} for name in unknown],
        )
    return body


async def _start(ctx: Context, flow_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
    engine = ctx.catalog.active(flow_id)
    if engine is None:
        raise Problem(404, "flow_not_found", f"flow '{flow_id}' is not active on this agent")
    ctx.check_accepting()
    try:
        return await ctx.runner.start(flow_id, inputs, engine=engine)
    except InputInvalid as exc:
        raise Problem(
            422,
            "invalid_inputs",
            f"the inputs do not fit flow '{flow_id}': {exc}",
            errors=input_problems(exc.problems),
        ) from None


def _created(result: dict[str, Any]) -> web.Response:
    return web.json_response(
        result, status=201, headers={"Location": f"{PREFIX}/runs/{result['run_id']}"}
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def list_flows(request: web.Request) -> web.Response:
    flows = _context(request).active_flows()
    return web.json_response({"flows": [describe_flow(f) for f in flows]})


async def start_run(request: web.Request) -> web.Response:
    ctx = _context(request)
    body = await _body_object(request, {"inputs"}, what="the body")
    inputs = body.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise Problem(
            422, "invalid_body", "'inputs' must be a JSON object of input names to values"
        )
    return _created(await _start(ctx, request.match_info["flow_id"], inputs))


async def get_run(request: web.Request) -> web.Response:
    ctx = _context(request)
    run_id = request.match_info["run_id"]
    try:
        return web.json_response(await ctx.runner.result_of(run_id))
    except RunNotFound:
        raise Problem(404, "run_not_found", f"no run '{run_id}' on this agent") from None


async def list_runs(request: web.Request) -> web.Response:
    ctx = _context(request)
    query = request.rel_url.query
    status = query.get("status") or None
    errors = []
    if status is not None and status not in RUN_STATUSES:
        errors.append(
            {"parameter": "status", "detail": f"one of {', '.join(sorted(RUN_STATUSES))}"}
        )
    limit = 100
    if "limit" in query:
        text = query["limit"]
        if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT:
            limit = int(text)
        else:
            errors.append({"parameter": "limit", "detail": f"a whole number 1 to {MAX_LIMIT}"})
    if errors:
        raise Problem(400, "invalid_query", "bad query parameter(s)", errors=errors)
    records = ctx.store.list_runs(status=status, flow_id=query.get("flow") or None, limit=limit)
    return web.json_response({"runs": await ctx.results(records)})


async def resume_run(request: web.Request) -> web.Response:
    ctx = _context(request)
    run_id = request.match_info["run_id"]
    body = await _body_object(request, {"outcome", "fields", "state_token"}, what="the answer")
    outcome, fields, token = body.get("outcome"), body.get("fields", {}), body.get("state_token")
    errors = []
    if not isinstance(outcome, str) or not outcome:
        errors.append({"member": "outcome", "detail": "the id of an outcome (a string)"})
    if not isinstance(fields, dict):
        errors.append({"member": "fields", "detail": "an object of field values"})
    if token is not None and not isinstance(token, str):
        errors.append({"member": "state_token", "detail": "a string or null"})
    if errors:
        raise Problem(422, "invalid_body", "the answer is not well formed", errors=errors)
    answer = Answer(outcome=str(outcome), fields=dict(fields), state_token=token)
    try:
        result = await ctx.runner.resume(run_id, answer=answer)
    except RunNotFound:
        raise Problem(404, "run_not_found", f"no run '{run_id}' on this agent") from None
    except EngineMisuse:
        raise _moved_on(token, f"run '{run_id}' has already ended") from None
    except AnswerRefused as exc:
        if exc.code in MOVED_ON_CODES:
            raise _moved_on(token, str(exc)) from None
        entry: dict[str, Any] = {"code": exc.code, "detail": str(exc)}
        name = refused_field(exc)
        if name is not None:
            entry["field"] = name
        raise Problem(422, exc.code, str(exc), errors=[entry]) from None
    return web.json_response(result)


def _moved_on(token: str | None, detail: str) -> Problem:
    """409: whoever sent a state token sees ``stale_token`` (reload the page),
    whatever the run went on to do; without one, ``not_waiting``."""
    return Problem(409, "stale_token" if token is not None else "not_waiting", detail)


async def cancel_run(request: web.Request) -> web.Response:
    ctx = _context(request)
    run_id = request.match_info["run_id"]
    try:
        current = await ctx.runner.result_of(run_id)
        if current["status"] in ("completed", "failed"):
            raise Problem(409, "already_ended", f"run '{run_id}' has already {current['status']}")
        return web.json_response(await ctx.runner.cancel(run_id))
    except RunNotFound:
        raise Problem(404, "run_not_found", f"no run '{run_id}' on this agent") from None


async def webhook(request: web.Request) -> web.Response:
    ctx = _context(request)
    flow_id = request.match_info["flow_id"]
    flow = ctx.flow(flow_id)
    trigger = next((t for t in flow.triggers if t.webhook), None) if flow else None
    if trigger is None:
        raise Problem(404, "webhook_not_found", f"flow '{flow_id}' has no webhook trigger here")
    body = await request.read()
    signature = request.headers.get(SIGNATURE_HEADER)
    if trigger.secret is not None:
        secret = ctx.secrets.get(trigger.secret)
        if secret is None:
            log.warning(
                "webhook of flow %s names secret %r, which is not in the secret store",
                flow_id,
                trigger.secret,
            )
            raise Problem(503, "webhook_unconfigured", "this webhook's secret is not set up")
        try:
            verify(
                secret,
                timestamp=request.headers.get(TIMESTAMP_HEADER),
                signature=signature,
                body=body,
                now=ctx.clock(),
            )
        except SignatureRefused as exc:
            raise Problem(401, exc.code, exc.message) from None
        assert signature is not None
        if not ctx.replay.first_time(signature, now=ctx.clock()):
            raise Problem(409, "delivery_replayed", "this delivery was already received")
    elif ctx.token is not None and not _bearer_ok(request, ctx.token):
        # An unsigned webhook is no exception to the API's bearer token.
        raise Problem(
            401,
            "unauthorized",
            "this webhook is not signed, so it needs the API's bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        inputs: Any = {}
        if body.strip():
            if not is_json_type(request.content_type):
                raise Problem(415, "unsupported_media_type", "send the body as application/json")
            inputs = parse_json(body)
        if not isinstance(inputs, dict):
            raise Problem(422, "invalid_inputs", "the body must be a JSON object of inputs")
        return _created(await _start(ctx, flow_id, inputs))
    except Problem:
        raise  # the delivery itself is at fault: a retry of it is a replay
    except Exception:
        if signature:
            ctx.replay.forget(signature)  # the agent failed: the sender may retry
        raise


# CallbackRefused.code -> (HTTP status, problem code)
_CALLBACK_REFUSALS: dict[str, tuple[int, str]] = {
    "invalid_token": (401, "invalid_callback_token"),
    "used": (409, "callback_used"),
    "not_waiting": (409, "not_waiting"),
    "unknown_run": (404, "run_not_found"),
    "invalid_outputs": (422, "invalid_body"),
}
_CALLBACK_SUFFIX = "/callback"


def is_callback(request: web.Request) -> bool:
    """A connector service's callback (its token is checked by the handler)."""
    path = request.path
    return (
        request.method == "POST"
        and path.startswith(f"{PREFIX}/runs/")
        and path.endswith(_CALLBACK_SUFFIX)
        and path.count("/") == 5
    )


async def run_callback(request: web.Request) -> web.Response:
    """A connector service finishes the action a run waits on (docs/connectors.md)."""
    ctx = _context(request)
    run_id = request.match_info["run_id"]
    if ctx.callbacks is None:
        raise Problem(404, "not_found", "this agent takes no connector callbacks")
    token = bearer(request.headers.get("Authorization"))
    if token is None:
        raise Problem(
            401,
            "invalid_callback_token",
            "a callback needs 'Authorization: Bearer <callback token>' (the token the agent"
            " sent with the action call)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    body = await _body_object(request, {"outputs", "error"}, what="the callback")
    outputs, error = body.get("outputs"), body.get("error")
    errors = []
    if outputs is not None and not isinstance(outputs, dict):
        errors.append({"member": "outputs", "detail": "an object of output names to values"})
    if error is not None and (not isinstance(error, str) or not error.strip()):
        errors.append({"member": "error", "detail": "a message (a non-empty string)"})
    if outputs is not None and error is not None:
        errors.append({"member": "error", "detail": "give outputs or error, not both"})
    if errors:
        raise Problem(422, "invalid_body", "the callback is not well formed", errors=errors)
    try:
        result = await complete_callback(
            ctx.runner, run_id, token, outputs, issuer=ctx.callbacks, error=error
        )
    except CallbackRefused as exc:
        status, code = _CALLBACK_REFUSALS.get(exc.code, (409, exc.code))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        raise Problem(status, code, exc.message, headers=headers) from None
    return web.json_response(result)


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/openapi.json", openapi)
    app.router.add_get(f"{PREFIX}/flows", list_flows)
    app.router.add_post(f"{PREFIX}/flows/{{flow_id}}/runs", start_run)
    app.router.add_get(f"{PREFIX}/runs", list_runs)
    app.router.add_get(f"{PREFIX}/runs/{{run_id}}", get_run)
    app.router.add_post(f"{PREFIX}/runs/{{run_id}}/resume", resume_run)
    app.router.add_post(f"{PREFIX}/runs/{{run_id}}/cancel", cancel_run)
    app.router.add_post(f"{PREFIX}/runs/{{run_id}}/callback", run_callback)
    app.router.add_post(f"{PREFIX}/hooks/{{flow_id}}", webhook)
