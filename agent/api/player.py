"""The player page under ``/ui/``: server-rendered forms, no JavaScript.

Every form posts and is answered with a redirect to a page to GET (POST,
redirect, GET), except a refused form, which is shown again with 422 and the
messages beside their fields.  Cross-site posts are refused by the
``SameSite=Strict`` session cookie together with an Origin (or Referer)
check in the app's auth middleware.
"""

from __future__ import annotations

import math
from datetime import UTC
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from agent.flow import values as V
from agent.flow.commands import Answer
from agent.flow.engine import AnswerRefused, EngineMisuse, InputInvalid
from agent.flow.model import Flow
from agent.runtime.runner import RunNotFound

from . import forms
from .auth import SESSION_COOKIE, same_secret, session_value
from .context import CONTEXT, MOVED_ON_CODES, Context, input_problems, refused_field
from .problems import Problem

UI = "/ui"
LOGIN = f"{UI}/login"
STATIC = f"{UI}/static/"
_FINISHED = ("completed", "failed", "cancelled")
_SECURITY_HEADERS = {
    # No script runs on these pages; forms post only here; no framing.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("agent.api", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def is_player(path: str) -> bool:
    return path == UI or path.startswith(f"{UI}/")


def is_public(path: str) -> bool:
    """Player paths that need no session: the login form and the stylesheet."""
    return path == LOGIN or path.startswith(STATIC)


def _ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]


def render(
    request: web.Request, template: str, *, status: int = 200, **values: Any
) -> web.Response:
    ctx = _ctx(request)
    signed_in = ctx.token is not None and request.cookies.get(SESSION_COOKIE) is not None
    text = _env.get_template(template).render(signed_in=signed_in, **values)
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(_SECURITY_HEADERS)
    return response


def error_page(request: web.Request, problem: Problem) -> web.Response:
    response = render(request, "error.html", status=problem.status, problem=problem)
    response.headers.update(problem.headers)
    return response


def _see_other(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location, headers={"Cache-Control": "no-store"})


def _flow_title(flow: Flow | None, flow_id: str) -> str:
    return (flow.name if flow is not None and flow.name else None) or flow_id


# -- the flows ---------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    runs = await ctx.results(ctx.store.list_runs(limit=20))
    return render(request, "index.html", flows=ctx.active_flows(), runs=runs)


def _start_widgets(
    flow: Flow, submitted: dict[str, str | None], errors: dict[str, str]
) -> list[forms.Widget]:
    return [
        forms.widget(
            prefix="input",
            name=value.name,
            label=value.name,
            type_=value.type,
            value=V.to_plain(V.normalize(value.default)),
            required=False,
            submitted=submitted.get(value.name),
            error=errors.get(value.name),
        )
        for value in flow.inputs
        if value.type != "secret"
    ]


def _flow_or_404(ctx: Context, flow_id: str) -> Flow:
    flow = ctx.flow(flow_id)
    if flow is None:
        raise Problem(404, "flow_not_found", f"flow '{flow_id}' is not active on this agent")
    return flow


async def start_form(request: web.Request) -> web.Response:
    flow = _flow_or_404(_ctx(request), request.match_info["flow_id"])
    return render(
        request,
        "start.html",
        flow=flow,
        title=_flow_title(flow, flow.id),
        widgets=_start_widgets(flow, {}, {}),
        problems=[],
    )


async def start_run(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    flow = _flow_or_404(ctx, request.match_info["flow_id"])
    form = await request.post()
    submitted: dict[str, str | None] = {}
    inputs: dict[str, Any] = {}
    for value in flow.inputs:
        text = forms.submitted_text(form, f"input.{value.name}")
        submitted[value.name] = text
        if value.type == "boolean":
            inputs[value.name] = forms.from_form("boolean", text)
        elif text is not None and text.strip():  # left empty: the input's default
            inputs[value.name] = text
    ctx.check_accepting()
    try:
        result = await ctx.runner.start(flow.id, inputs)
    except InputInvalid as exc:
        errors: dict[str, str] = {}
        problems = []
        for entry in input_problems(exc.problems):
            name = entry.get("input")
            if name in submitted and name not in errors:
                errors[name] = entry["detail"].split(": ", 1)[-1]
            else:
                problems.append(entry["detail"])
        return render(
            request,
            "start.html",
            status=422,
            flow=flow,
            title=_flow_title(flow, flow.id),
            widgets=_start_widgets(flow, submitted, errors),
            problems=problems,
        )
    raise _see_other(f"{UI}/runs/{quote(result['run_id'])}")


# -- a run -------------------------------------------------------------------------


def _deepest(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The run (this one or a subflow of it) a person would act on, and its wait."""
    owner, waiting = result, result.get("waiting")
    while waiting and waiting.get("kind") == "subflow":
        child = waiting.get("child_run")
        if not child or not child.get("waiting"):
            break
        owner, waiting = child, child["waiting"]
    return owner, waiting


def _timeline(ctx: Context, result: dict[str, Any]) -> list[dict[str, Any]]:
    engine = ctx.catalog.version(result["flow"], result["version"])
    elements = engine.flow.elements if engine is not None else {}
    items = []
    for position, element_id in enumerate(result["path"], start=1):
        element = elements.get(element_id)
        child = f"{result['run_id']}.{position}"
        items.append(
            {
                "position": position,
                "id": element_id,
                "label": element.label if element is not None else None,
                "type": element.type if element is not None else "?",
                "child": child
                if element is not None
                and element.type == "subflow"
                and ctx.store.get_run(child) is not None
                else None,
            }
        )
    return items


def _due(until: str | None, now: float) -> tuple[str, str, int]:
    """When a timer is due (UTC text), how far off, and seconds to the next refresh."""
    if not until:
        return "unknown", "", 5
    moment = V.parse_datetime(until).astimezone(UTC)
    left = moment.timestamp() - now
    if left <= 0:
        relative = "due now"
    elif left < 90:
        relative = f"in {math.ceil(left)} seconds"
    elif left < 90 * 60:
        relative = f"in {math.ceil(left / 60)} minutes"
    elif left < 48 * 3600:
        relative = f"in {left / 3600:.1f} hours"
    else:
        relative = f"in {left / 86400:.1f} days"
    # Overdue: the agent's timer loop is about to take it; do not hammer.
    refresh = 5 if left <= 0 else int(min(max(math.ceil(left), 2), 30))
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC"), relative, refresh


def _page_widgets(
    waiting: dict[str, Any], submitted: dict[str, str | None], errors: dict[str, str]
) -> list[forms.Widget]:
    return [
        forms.widget(
            prefix="field",
            name=f["value"],
            label=f["label"],
            type_=f["type"],
            value=f["current"],
            required=bool(f["required"]),
            submitted=submitted.get(f["value"]),
            error=errors.get(f["value"]),
        )
        for f in waiting.get("fields", [])
    ]


def _outputs(ctx: Context, result: dict[str, Any]) -> list[tuple[str, str]]:
    engine = ctx.catalog.version(result["flow"], result["version"])
    types = {n: v.type for n, v in engine.flow.values.items()} if engine else {}
    return [
        (name, forms.display(types.get(name, "string"), value) or "(empty)")
        for name, value in result["outputs"].items()
    ]


async def _render_run(
    request: web.Request,
    result: dict[str, Any],
    *,
    status: int = 200,
    submitted: dict[str, str | None] | None = None,
    errors: dict[str, str] | None = None,
    problems: list[str] | None = None,
) -> web.Response:
    ctx = _ctx(request)
    owner, waiting = _deepest(result)
    view = result["status"]
    if view == "waiting" and waiting is not None:
        view = {"input": "page", "timer": "timer", "callback": "callback"}.get(
            waiting.get("kind", ""), "working"
        )
    elif view == "running":
        view = "working"
    due, relative, refresh = _due(waiting.get("until") if waiting else None, ctx.clock())
    if view in ("working", "callback"):
        refresh = 5
    flow = ctx.flow(result["flow"])
    return render(
        request,
        "run.html",
        status=status,
        result=result,
        title=_flow_title(flow, result["flow"]),
        view=view,
        owner=owner,
        waiting=waiting,
        widgets=_page_widgets(waiting, submitted or {}, errors or {})
        if view == "page" and waiting
        else [],
        problems=problems or [],
        notice=request.query.get("notice"),
        due=due,
        relative=relative,
        refresh=refresh if view not in ("page", *_FINISHED) else None,
        outputs=_outputs(ctx, result),
        timeline=_timeline(ctx, result),
        finished=result["status"] in _FINISHED,
    )


async def _result_or_404(ctx: Context, run_id: str) -> dict[str, Any]:
    try:
        return await ctx.runner.result_of(run_id)
    except RunNotFound:
        raise Problem(404, "run_not_found", f"no run '{run_id}' on this agent") from None


async def run_page(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    return await _render_run(request, await _result_or_404(ctx, request.match_info["run_id"]))


async def answer(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    run_id = request.match_info["run_id"]
    here = f"{UI}/runs/{quote(run_id)}"
    result = await _result_or_404(ctx, run_id)
    form = await request.post()
    _, waiting = _deepest(result)
    if waiting is None or waiting.get("kind") != "input":
        raise _see_other(f"{here}?notice=moved")
    submitted: dict[str, str | None] = {}
    fields: dict[str, Any] = {}
    for spec in waiting.get("fields", []):
        text = forms.submitted_text(form, f"field.{spec['value']}")
        submitted[spec["value"]] = text
        fields[spec["value"]] = forms.from_form(spec["type"], text)
    token = forms.submitted_text(form, "state_token")
    outcome = forms.submitted_text(form, "outcome") or ""
    try:
        await ctx.runner.resume(
            run_id, answer=Answer(outcome=outcome, fields=fields, state_token=token)
        )
    except EngineMisuse:
        raise _see_other(f"{here}?notice=moved") from None
    except AnswerRefused as exc:
        if exc.code in MOVED_ON_CODES:
            raise _see_other(f"{here}?notice=moved") from None
        # The engine names the first problem; look at every field so that a
        # person sees all of them at once.
        errors: dict[str, str] = {}
        for spec in waiting.get("fields", []):
            message = forms.check(
                spec["type"], fields.get(spec["value"]), required=bool(spec["required"])
            )
            if message is not None:
                errors[spec["value"]] = message
        name = refused_field(exc)
        problems = []
        if name in submitted:
            errors.setdefault(name, str(exc))
        else:
            problems.append(str(exc))
        return await _render_run(
            request, result, status=422, submitted=submitted, errors=errors, problems=problems
        )
    raise _see_other(here)


async def cancel(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    run_id = request.match_info["run_id"]
    await _result_or_404(ctx, run_id)
    await ctx.runner.cancel(run_id)
    raise _see_other(f"{UI}/runs/{quote(run_id)}")


# -- signing in --------------------------------------------------------------------


def _next(target: str | None) -> str:
    """Where to go after signing in: only a player path, never another site."""
    if target and target.startswith(f"{UI}/") and not target.startswith("//"):
        return target
    return f"{UI}/"


async def login_form(request: web.Request) -> web.Response:
    if _ctx(request).token is None:
        raise _see_other(f"{UI}/")
    return render(request, "login.html", next=_next(request.query.get("next")), error=None)


async def login(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    if ctx.token is None:
        raise _see_other(f"{UI}/")
    form = await request.post()
    given = forms.submitted_text(form, "token") or ""
    target = _next(forms.submitted_text(form, "next"))
    if not same_secret(given.strip(), ctx.token):
        return render(
            request,
            "login.html",
            status=401,
            next=target,
            error="That is not this agent's API token.",
        )
    response = _see_other(target)
    response.set_cookie(
        SESSION_COOKIE,
        session_value(ctx.token),
        path=f"{UI}/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    response = _see_other(LOGIN)
    response.del_cookie(SESSION_COOKIE, path=f"{UI}/")
    raise response


async def stylesheet(request: web.Request) -> web.Response:
    text = resources.files("agent.api").joinpath("static", "style.css").read_text("utf-8")
    response = web.Response(text=text, content_type="text/css", charset="utf-8")
    response.headers["Cache-Control"] = "max-age=3600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def _to_index(request: web.Request) -> web.Response:
    raise _see_other(f"{UI}/")


def add_routes(app: web.Application) -> None:
    app.router.add_get(UI, _to_index)
    app.router.add_get(f"{UI}/", index)
    app.router.add_get(f"{STATIC}style.css", stylesheet)
    app.router.add_get(LOGIN, login_form)
    app.router.add_post(LOGIN, login)
    app.router.add_post(f"{UI}/logout", logout)
    app.router.add_get(f"{UI}/flows/{{flow_id}}", start_form)
    app.router.add_post(f"{UI}/flows/{{flow_id}}/runs", start_run)
    app.router.add_get(f"{UI}/runs/{{run_id}}", run_page)
    app.router.add_post(f"{UI}/runs/{{run_id}}/answer", answer)
    app.router.add_post(f"{UI}/runs/{{run_id}}/cancel", cancel)


__all__ = ["add_routes", "error_page", "is_player", "is_public"]
