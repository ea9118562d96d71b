"""OpenAPI 3.1 description of the admin API, served at ``/admin/v1/openapi.json``.

Kept as data next to the routes; a test fails when a route is missing here.
"""

from __future__ import annotations

from typing import Any

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: tuple[str, dict[str, Any], str],
    *,
    body: dict[str, Any] | None = None,
    errors: tuple[str, ...] = ("401", "404"),
    params: tuple[str, ...] = (),
    query: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    status, schema, text = ok
    responses: dict[str, Any] = {status: _json(schema, text)}
    for code in errors:
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    parameters = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
    ]
    parameters += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": "number"},
            "description": text,
        }
        for name, text in query
    ]
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
OBJ = {"type": "object"}
T = ("tenant",)


def openapi_document() -> dict[str, Any]:
    runs_list = _obj(["runs"], runs={"type": "array", "items": _ref("Run")})
    run_body = _obj(
        ["flow"],
        flow=STR,
        agent={**STR, "description": "agent id; default: any online agent of the tenant"},
        inputs=OBJ,
        version={"type": ["integer", "null"]},
        run_id={**STR, "description": "your own run id; repeating it never starts a second run"},
        wait={**NUM, "description": "seconds to wait for the run to end or wait for a person"},
    )
    base = "/admin/v1/tenants/{tenant}"
    paths: dict[str, Any] = {
        "/admin/v1/openapi.json": {
            "get": _op(
                "This document (no admin key needed)", ("200", OBJ, "OpenAPI 3.1"), errors=()
            )
        },
        "/admin/v1/info": {
            "get": _op(
                "Region, public URL and signing key", ("200", _ref("Info"), "info"), errors=("401",)
            )
        },
        "/admin/v1/tenants": {
            "get": _op(
                "List tenants",
                ("200", _obj(["tenants"], tenants={"type": "array"}), "tenants"),
                errors=("401",),
            ),
            "post": _op(
                "Create a tenant",
                ("201", _obj(["name"], name=STR), "created"),
                body=_obj(["name"], name=STR),
                errors=("400", "401", "409"),
            ),
        },
        base + "/tokens": {
            "post": _op(
                "Create a single-use pairing token",
                (
                    "201",
                    _obj(["token", "expires_at"], token=STR, tenant=STR, expires_at=STR),
                    "the token (shown once)",
                ),
                body=_obj([], ttl={**NUM, "description": "seconds, default 86400"}),
                errors=("400", "401", "404"),
                params=T,
            )
        },
        base + "/agents": {
            "get": _op(
                "List agents",
                (
                    "200",
                    _obj(["agents"], agents={"type": "array", "items": _ref("Agent")}),
                    "agents",
                ),
                params=T,
            )
        },
        base + "/agents/{agent_id}": {
            "get": _op(
                "One agent, with its flow acknowledgements",
                ("200", _ref("Agent"), "agent"),
                params=(*T, "agent_id"),
            )
        },
        base + "/agents/{agent_id}/revoke": {
            "post": _op(
                "Revoke an agent and close its link (4403)",
                ("200", _ref("Agent"), "revoked"),
                params=(*T, "agent_id"),
            )
        },
        base + "/agents/{agent_id}/secrets": {
            "post": _op(
                "Seal a secret to one online agent and wait until it stored it",
                (
                    "200",
                    _obj(
                        ["agent_id", "name", "stored"],
                        agent_id=STR,
                        name=STR,
                        stored={"type": "boolean"},
                    ),
                    "stored by the agent, encrypted; the control plane kept no value",
                ),
                body=_obj(
                    ["name", "value"],
                    name=STR,
                    value={**STR, "description": "sealed to the agent, never stored here"},
                ),
                errors=("400", "401", "404", "409", "422", "504"),
                params=(*T, "agent_id"),
            )
        },
        base + "/agents/{agent_id}/events": {
            "get": _op(
                "Events stored for an agent, by seq",
                ("200", _obj(["events"], events={"type": "array"}), "events"),
                params=(*T, "agent_id"),
                query=(("after", "seq to start after"), ("limit", "at most this many")),
            )
        },
        base + "/flows": {
            "get": _op(
                "Flows, their versions and the active one",
                ("200", _obj(["flows"], flows={"type": "array"}), "flows"),
                params=T,
            ),
            "post": _op(
                "Publish a flow/v1 document as its next version and make it active",
                (
                    "201",
                    _obj(
                        ["id", "version"],
                        id=STR,
                        version=INT,
                        sha256=STR,
                        signature=STR,
                        pushed_to=INT,
                    ),
                    "published",
                ),
                body=_obj(["definition"], definition=OBJ),
                errors=("400", "401", "404", "422"),
                params=T,
            ),
        },
        base + "/flows/{flow_id}/versions/{version}": {
            "get": _op(
                "One published version, signed",
                ("200", _ref("FlowVersion"), "version"),
                params=(*T, "flow_id", "version"),
            )
        },
        base + "/flows/{flow_id}/activate": {
            "post": _op(
                "Make a published version active (rollback); signed, serial increases",
                (
                    "200",
                    _obj(
                        ["id", "version", "serial"],
                        id=STR,
                        version=INT,
                        serial=INT,
                        signature=STR,
                        pushed_to=INT,
                    ),
                    "activated",
                ),
                body=_obj(["version"], version=INT),
                errors=("400", "401", "404"),
                params=(*T, "flow_id"),
            )
        },
        base + "/runs": {
            "get": _op(
                "Recent runs, newest first",
                ("200", runs_list, "runs"),
                params=T,
                query=(("limit", "at most this many"),),
            ),
            "post": _op(
                "Start a run on an online agent (idempotent on run_id)",
                ("201", _ref("Run"), "created (200 when run_id was known)"),
                body=run_body,
                errors=("400", "401", "404", "409"),
                params=T,
            ),
        },
        base + "/runs/{run_id}": {
            "get": _op(
                "One run",
                ("200", _ref("Run"), "run"),
                params=(*T, "run_id"),
                query=(("wait", "seconds to wait for it to settle"),),
            )
        },
        base + "/runs/{run_id}/cancel": {
            "post": _op(
                "Ask the agent to cancel a run",
                ("202", _ref("Run"), "cancel sent"),
                errors=("401", "404", "409"),
                params=(*T, "run_id"),
            )
        },
    }
    error = _obj(
        ["error", "message"],
        error=STR,
        message=STR,
        hint=STR,
        issues={"type": "array", "items": _obj(["path", "message"], path=STR, message=STR)},
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "flow-controlplane admin API", "version": "1"},
        "paths": paths,
        "security": [{"adminKey": []}],
        "components": {
            "securitySchemes": {
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin key from DATA/admin.key",
                }
            },
            "responses": {
                code: _json(_ref("Error"), text)
                for code, text in (
                    ("400", "bad request"),
                    ("401", "missing or wrong admin key"),
                    ("404", "unknown tenant, agent, flow or run"),
                    ("409", "conflict (exists, no agent online, run ended)"),
                    ("422", "invalid flow (issues lists path and message), or refused secret"),
                    ("504", "the agent did not answer in time"),
                )
            },
            "schemas": {
                "Error": error,
                "Info": _obj(
                    ["region", "url", "signing_key", "fingerprint"],
                    region=STR,
                    url=STR,
                    signing_key=STR,
                    fingerprint=STR,
                ),
                "Agent": _obj(
                    ["id", "name", "status"],
                    id=STR,
                    tenant=STR,
                    name=STR,
                    status={"enum": ["online", "offline", "revoked"]},
                    version={"type": ["string", "null"]},
                    last_seen={"type": ["string", "null"]},
                    last_seq=INT,
                    facts=OBJ,
                    report={"type": ["object", "null"]},
                ),
                "FlowVersion": _obj(
                    ["id", "version", "definition", "signature"],
                    tenant=STR,
                    id=STR,
                    version=INT,
                    sha256=STR,
                    signature=STR,
                    published_at=STR,
                    definition=OBJ,
                ),
                "Run": _obj(
                    ["run_id", "status", "result"],
                    run_id=STR,
                    tenant=STR,
                    flow=STR,
                    version={"type": ["integer", "null"]},
                    agent={"type": ["string", "null"]},
                    status={
                        "enum": [
                            "dispatched",
                            "accepted",
                            "refused",
                            "running",
                            "waiting",
                            "completed",
                            "failed",
                            "cancelled",
                        ]
                    },
                    reason={"type": ["string", "null"]},
                    reason_message={
                        "type": ["string", "null"],
                        "description": "why the agent refused the run, for a person",
                    },
                    origin=STR,
                    created_at=STR,
                    updated_at=STR,
                    result={**OBJ, "description": "the run result as reported by the agent"},
                    created={"type": "boolean"},
                ),
            },
        },
    }
