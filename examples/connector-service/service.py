"""An example connector service for flow-agent's ``service`` connector.

It offers two actions:

* ``quote``  answers at once: the total of an amount with 20 % tax.
* ``approve`` answers ``{"status": "wait"}`` and decides later: it POSTs the
  outputs to the callback URL the agent sent, with the callback token
  (after ``--callback-delay`` seconds).

Run it next to an agent::

    python examples/connector-service/service.py --port 8400 --token "$SERVICE_TOKEN"

and point a flow's connector at it (see flow.json beside this file, and
docs/connectors.md for the protocol).  Only the standard library and
aiohttp, which flow-agent already depends on.
"""

from __future__ import annotations

import argparse
import asyncio
from decimal import Decimal
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

ACTIONS: list[dict[str, Any]] = [
    {
        "name": "quote",
        "label": "Price with tax",
        "inputs": [
            {"name": "amount", "type": "number", "required": True},
            {"name": "currency", "type": "string"},
        ],
        "outputs": [{"name": "total", "type": "number"}, {"name": "currency", "type": "string"}],
    },
    {
        "name": "approve",
        "label": "Ask the approval desk",
        "inputs": [
            {"name": "amount", "type": "number", "required": True},
            {"name": "who", "type": "string"},
        ],
        "outputs": [{"name": "approved", "type": "boolean"}, {"name": "ticket", "type": "string"}],
    },
]

TOKEN = web.AppKey("token", str)
DELAY = web.AppKey("delay", object)
PENDING = web.AppKey("pending", list)
ANSWERS = web.AppKey("answers", dict)
TASKS = web.AppKey("tasks", set)


def make_app(*, token: str | None = None, callback_delay: float | None = 1.0) -> web.Application:
    """The service.  With ``callback_delay`` None, ``approve`` only records its
    callbacks in ``app[PENDING]`` (tests send them when they choose)."""
    app = web.Application()
    app[TOKEN] = token or ""
    app[DELAY] = callback_delay
    app[PENDING] = []
    app[ANSWERS] = {}  # idempotency key -> the answer already given
    app[TASKS] = set()
    app.router.add_post("/metadata", metadata)
    app.router.add_post("/actions/{name}", action)
    app.on_cleanup.append(_cancel_tasks)
    return app


def _authorized(request: web.Request) -> bool:
    token = request.app[TOKEN]
    return not token or request.headers.get("Authorization") == f"Bearer {token}"


async def metadata(request: web.Request) -> web.Response:
    if not _authorized(request):
        return web.json_response({"message": "a valid bearer token is required"}, status=401)
    return web.json_response({"actions": ACTIONS})


async def action(request: web.Request) -> web.Response:
    if not _authorized(request):
        return web.json_response({"message": "a valid bearer token is required"}, status=401)
    body = await request.json()
    key = body.get("idempotency_key")
    if key in request.app[ANSWERS]:
        # A retry of a call we already answered (the agent restarted, say).
        return web.json_response(request.app[ANSWERS][key])
    name = request.match_info["name"]
    inputs = body.get("inputs") or {}
    if name == "quote":
        amount = Decimal(str(inputs["amount"]))
        total = (amount * Decimal("1.2")).quantize(Decimal("0.01"))
        answer = {
            "status": "done",
            "outputs": {"total": float(total), "currency": inputs.get("currency") or "EUR"},
        }
    elif name == "approve":
        callback = body.get("callback")
        if not callback:
            answer = {"status": "error", "message": "approve needs a callback URL"}
        else:
            approved = Decimal(str(inputs["amount"])) < 1000
            outputs = {"approved": approved, "ticket": f"T-{len(request.app[ANSWERS]) + 1}"}
            request.app[PENDING].append((callback, outputs))
            delay = request.app[DELAY]
            if isinstance(delay, int | float):
                task = asyncio.create_task(_call_back(callback, outputs, delay))
                request.app[TASKS].add(task)
                task.add_done_callback(request.app[TASKS].discard)
            answer = {"status": "wait"}
    else:
        return web.json_response({"message": f"no action {name}"}, status=404)
    request.app[ANSWERS][key] = answer
    return web.json_response(answer)


async def _call_back(callback: dict[str, str], outputs: dict[str, Any], delay: float) -> None:
    await asyncio.sleep(delay)
    await send_callback(callback, outputs)


async def send_callback(callback: dict[str, str], outputs: dict[str, Any]) -> int:
    """POST the outputs to the agent, as the protocol says; returns the HTTP status."""
    async with (
        ClientSession(timeout=ClientTimeout(total=10)) as session,
        session.post(
            callback["url"],
            json={"outputs": outputs},
            headers={"Authorization": f"Bearer {callback['token']}"},
        ) as response,
    ):
        return response.status


async def _cancel_tasks(app: web.Application) -> None:
    for task in list(app[TASKS]):
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--token", help="require this bearer token")
    parser.add_argument("--callback-delay", type=float, default=1.0)
    args = parser.parse_args()
    app = make_app(token=args.token, callback_delay=args.callback_delay)
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
