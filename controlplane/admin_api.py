"""The admin REST API (``/admin/v1``) and the agent pairing endpoint.

Admin routes need ``Authorization: Bearer <admin key>``, compared in constant
time; ``/admin/v1/openapi.json`` (the description of these routes) is open.
Errors are JSON ``{"error": code, "message": ..., "hint"?: ...}`` with the
status of the ``ControlPlaneError`` raised.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from agent.errors import AgentError
from controlplane.errors import BadRequest, ControlPlaneError
from controlplane.openapi import openapi_document
from controlplane.service import ControlPlane

log = logging.getLogger("controlplane.api")

ADMIN: Final = "/admin/v1"
OPENAPI_PATH: Final = f"{ADMIN}/openapi.json"
CP_KEY: Final = web.AppKey("controlplane", ControlPlane)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, hint: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if hint:
        body["hint"] = hint
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControlPlaneError as exc:
        return web.json_response(exc.to_json(), status=exc.status)
    except AgentError as exc:
        log.error("request %s %s failed: %s", request.method, request.path, exc)
        return _error(500, "internal", exc.message, exc.hint)
    except web.HTTPException:
        raise  # redirects and aiohttp's own refusals are answers, not failures
    except Exception:
        log.exception("request %s %s crashed", request.method, request.path)
        return _error(500, "internal", "internal error; the server log has the details")


@web.middleware
async def admin_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(ADMIN + "/") and request.path != OPENAPI_PATH:
        cp = request.app[CP_KEY]
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _error(
                401,
                "unauthorized",
                "the admin API needs 'Authorization: Bearer <admin key>'",
                "the admin key is in DATA/admin.key of the server",
            )
        if not hmac.compare_digest(given.strip().encode(), cp.admin_key.encode()):
            return _error(401, "unauthorized", "the admin key was refused")
    return await handler(request)


async def read_json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _number(value: object, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadRequest(f"{name} must be a non-negative number of seconds")
    return float(value)


def _query_number(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return _number(float(raw), name, default)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None


class AdminApi:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def routes(self) -> list[web.RouteDef]:
        t = ADMIN + "/tenants/{tenant}"
        return [
            web.get(OPENAPI_PATH, self.openapi),
            web.get(f"{ADMIN}/info", self.info),
            web.get(f"{ADMIN}/tenants", self.list_tenants),
            web.post(f"{ADMIN}/tenants", self.create_tenant),
            web.post(f"{t}/tokens", self.create_token),
            web.get(f"{t}/agents", self.list_agents),
            web.get(t + "/agents/{agent_id}", self.get_agent),
            web.post(t + "/agents/{agent_id}/revoke", self.revoke),
            web.post(t + "/agents/{agent_id}/secrets", self.send_secret),
            web.get(t + "/agents/{agent_id}/events", self.events),
            web.get(f"{t}/flows", self.list_flows),
            web.post(f"{t}/flows", self.publish),
            web.get(t + "/flows/{flow_id}/versions/{version}", self.flow_version),
            web.post(t + "/flows/{flow_id}/activate", self.activate),
            web.get(f"{t}/runs", self.list_runs),
            web.post(f"{t}/runs", self.start_run),
            web.get(t + "/runs/{run_id}", self.get_run),
            web.post(t + "/runs/{run_id}/cancel", self.cancel_run),
            web.post("/agent/v1/pair", self.pair),
        ]

    async def _db(self, fn: Callable[[], Any]) -> Any:
        return await self.cp.db.run(fn)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(self.cp.info())

    async def list_tenants(self, request: web.Request) -> web.Response:
        names = await self._db(self.cp.store.list_tenants)
        return web.json_response({"tenants": [{"name": n} for n in names]})

    async def create_tenant(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        return web.json_response(await self.cp.create_tenant(body.get("name")), status=201)

    async def create_token(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        ttl = _number(body.get("ttl"), "ttl", 24 * 3600.0)
        return web.json_response(
            await self.cp.create_token(request.match_info["tenant"], ttl=ttl), status=201
        )

    async def list_agents(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        agents = await self._db(lambda: self.cp.store.list_agents(tenant))
        return web.json_response({"agents": [a.to_json() for a in agents]})

    async def get_agent(self, request: web.Request) -> web.Response:
        tenant, agent_id = request.match_info["tenant"], request.match_info["agent_id"]
        agent = await self._db(lambda: self.cp.store.tenant_agent(tenant, agent_id))
        acks = await self._db(lambda: self.cp.store.flow_acks(agent_id))
        return web.json_response({**agent.to_json(), "flow_acks": acks})

    async def revoke(self, request: web.Request) -> web.Response:
        agent = await self.cp.revoke(request.match_info["tenant"], request.match_info["agent_id"])
        return web.json_response(agent.to_json())

    async def send_secret(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        sent = await self.cp.send_secret(
            request.match_info["tenant"],
            request.match_info["agent_id"],
            name=body.get("name"),
            value=body.get("value"),
        )
        return web.json_response(sent)

    async def events(self, request: web.Request) -> web.Response:
        tenant, agent_id = request.match_info["tenant"], request.match_info["agent_id"]
        after = int(_query_number(request, "after", 0))
        limit = int(min(_query_number(request, "limit", 100), 1000))
        await self._db(lambda: self.cp.store.tenant_agent(tenant, agent_id))
        events = await self._db(lambda: self.cp.store.events(agent_id, after=after, limit=limit))
        return web.json_response({"events": events})

    async def list_flows(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        return web.json_response(
            {"flows": await self._db(lambda: self.cp.store.list_flows(tenant))}
        )

    async def publish(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if "definition" not in body:
            raise BadRequest("definition (the flow/v1 document) is required")
        flow, reached = await self.cp.publish(request.match_info["tenant"], body["definition"])
        return web.json_response(
            {
                "id": flow.flow_id,
                "version": flow.version,
                "sha256": flow.sha256,
                "signature": flow.signature,
                "pushed_to": reached,
            },
            status=201,
        )

    async def flow_version(self, request: web.Request) -> web.Response:
        tenant, flow_id = request.match_info["tenant"], request.match_info["flow_id"]
        try:
            version = int(request.match_info["version"])
        except ValueError:
            raise BadRequest("version must be an integer") from None
        flow = await self._db(lambda: self.cp.store.flow_version(tenant, flow_id, version))
        return web.json_response(flow.to_json())

    async def activate(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        version = body.get("version")
        if type(version) is not int or version < 1:
            raise BadRequest("version must be a positive integer")
        active, reached = await self.cp.activate(
            request.match_info["tenant"], request.match_info["flow_id"], version
        )
        return web.json_response(
            {
                "id": active.flow.flow_id,
                "version": active.flow.version,
                "serial": active.serial,
                "signature": active.activation_signature,
                "pushed_to": reached,
            }
        )

    async def list_runs(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        limit = int(min(_query_number(request, "limit", 100), 1000))
        runs = await self._db(lambda: self.cp.store.list_runs(tenant, limit=limit))
        return web.json_response({"runs": [r.to_json() for r in runs]})

    async def start_run(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        body = await read_json(request)
        wait = _number(body.get("wait"), "wait", 0.0)
        run, created = await self.cp.dispatch_run(
            tenant,
            flow=body.get("flow"),
            agent_id=body.get("agent"),
            inputs=body.get("inputs"),
            version=body.get("version"),
            run_id=body.get("run_id"),
        )
        if wait > 0:
            run = await self.cp.get_run(tenant, run.id, wait=wait)
        return web.json_response(
            {**run.to_json(), "created": created}, status=201 if created else 200
        )

    async def get_run(self, request: web.Request) -> web.Response:
        wait = _query_number(request, "wait", 0.0)
        run = await self.cp.get_run(
            request.match_info["tenant"], request.match_info["run_id"], wait=wait
        )
        return web.json_response(run.to_json())

    async def cancel_run(self, request: web.Request) -> web.Response:
        run = await self.cp.cancel_run(request.match_info["tenant"], request.match_info["run_id"])
        return web.json_response(run.to_json(), status=202)

    async def pair(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        return web.json_response(await self.cp.pair(body))
