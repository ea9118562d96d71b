"""The OpenAPI 3.1 description of the local API, served at ``/api/v1/openapi.json``.

Written by hand and checked against the running app by schemathesis in the
tests: every route, every request body, every status code it can answer.
The player page (``/ui/``, HTML forms) is described in docs/api.md instead.
"""

from __future__ import annotations

from typing import Any, Final

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_RUN_REF = {"$ref": "#/components/schemas/RunResult"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
    }


def _json(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


_AUTH_ERRORS = {
    "401": _problem("No or wrong bearer token (only when the agent has an API token)"),
    "403": _problem("A cross-site request, or a non-loopback Host without an API token"),
}
_BODY_ERRORS = {
    "400": _problem("The body is not valid JSON"),
    "413": _problem("The body is larger than the limit (1 MiB by default)"),
    "415": _problem("The body is not application/json"),
}
_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "A run id (``r_`` and 26 characters; a subflow run adds ``.VISIT``)",
}
_FLOW_ID = {
    "name": "flow_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "A flow id",
    "example": "approve",
}
_LOCATION = {
    "Location": {"description": "The run's URL", "schema": {"type": "string"}},
}
_RUN_LINKS = {
    name: {
        "operationId": operation,
        "parameters": {"run_id": "$response.body#/run_id"},
        "description": description,
    }
    for name, operation, description in (
        ("GetRun", "getRun", "The run's result, later"),
        ("ResumeRun", "resumeRun", "Answer the page the run waits on"),
        ("CancelRun", "cancelRun", "Cancel the run"),
    )
}

_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; ``type`` is urn:flow-agent:problem:CODE",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Outcome": {
        "type": "object",
        "required": ["id", "label"],
        "properties": {"id": {"type": "string"}, "label": {"type": "string"}},
    },
    "Field": {
        "type": "object",
        "required": ["value", "label", "required", "type", "current"],
        "properties": {
            "value": {"type": "string"},
            "label": {"type": "string"},
            "required": {"type": "boolean"},
            "type": {"type": "string"},
            "current": {},
        },
    },
    "Waiting": {
        "type": "object",
        "required": ["element", "kind", "state_token", "outcomes", "fields", "until"],
        "properties": {
            "element": {"type": "string"},
            "kind": {"enum": ["input", "timer", "subflow", "callback"]},
            "state_token": {"type": "string"},
            "outcomes": {"type": "array", "items": {"$ref": "#/components/schemas/Outcome"}},
            "fields": {"type": "array", "items": {"$ref": "#/components/schemas/Field"}},
            "until": {"type": ["string", "null"]},
            "title": {"type": "string"},
            "content": {"type": "string"},
            "child": {"type": "string"},
            "child_run": {
                "type": "object",
                "required": ["run_id", "flow", "status", "waiting"],
                "properties": {
                    "run_id": {"type": "string"},
                    "flow": {"type": "string"},
                    "status": {"type": "string"},
                    "waiting": {
                        "anyOf": [{"$ref": "#/components/schemas/Waiting"}, {"type": "null"}]
                    },
                },
            },
        },
    },
    "RunResult": {
        "type": "object",
        "description": "The run result of flow-format.md",
        "required": ["run_id", "flow", "version", "status", "outputs", "path", "waiting", "error"],
        "properties": {
            "run_id": {"type": "string"},
            "flow": {"type": "string"},
            "version": {"type": "integer"},
            "status": {"enum": ["running", "waiting", "completed", "failed", "cancelled"]},
            "outputs": {"type": "object"},
            "path": {"type": "array", "items": {"type": "string"}},
            "waiting": {"anyOf": [{"$ref": "#/components/schemas/Waiting"}, {"type": "null"}]},
            "error": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["element", "message"],
                        "properties": {
                            "element": {"type": ["string", "null"]},
                            "message": {"type": "string"},
                        },
                    },
                    {"type": "null"},
                ]
            },
        },
    },
    "Flow": {
        "type": "object",
        "required": ["id", "name", "version", "inputs", "triggers"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "version": {"type": "integer"},
            "inputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "type", "access", "default"],
                    "properties": {
                        "name": {"type": "string"},
                        "type": {
                            "enum": ["string", "number", "boolean", "datetime", "object", "list"]
                        },
                        "access": {"enum": ["input", "input_output"]},
                        "default": {},
                    },
                },
            },
            "triggers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kind"],
                    "properties": {
                        "kind": {"enum": ["webhook", "schedule"]},
                        "signed": {"type": "boolean"},
                        "schedule": {"type": "string"},
                        "timezone": {"type": ["string", "null"]},
                    },
                },
            },
        },
    },
    "StartRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"inputs": {"type": "object", "description": "input value names to values"}},
    },
    "Callback": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "outputs": {"type": "object", "description": "the action's outputs (takes next)"},
            "error": {
                "type": "string",
                "minLength": 1,
                "description": "the action failed with this message (takes fault)",
            },
        },
    },
    "Answer": {
        "type": "object",
        "additionalProperties": False,
        "required": ["outcome"],
        "properties": {
            "outcome": {"type": "string", "minLength": 1},
            "fields": {"type": "object", "description": "page field value names to values"},
            "state_token": {
                "type": ["string", "null"],
                "description": "the waiting.state_token shown; a stale one is refused with 409",
            },
        },
    },
}

OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "flow-agent local API",
        "version": "1",
        "description": "Start flows, answer their pages and watch runs on one agent. "
        "See docs/api.md for authentication and the webhook signature scheme.",
    },
    "servers": [{"url": "/"}],
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "Needed only when the agent has an API token "
                "(always when it listens beyond loopback)",
            },
            "callback": {
                "type": "http",
                "scheme": "bearer",
                "description": "The callback token of one action call of one run",
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/livez": {
            "get": {
                "summary": "Liveness: 200 while the event loop runs",
                "operationId": "livez",
                "security": [],
                "responses": {
                    "200": _json(
                        "Alive",
                        {"type": "object", "properties": {"status": {"const": "ok"}}},
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: store, API and flows are up",
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": _json(
                        "Ready",
                        {"type": "object", "properties": {"status": {"const": "ready"}}},
                    ),
                    "503": _json(
                        "Not ready, and why",
                        {
                            "type": "object",
                            "required": ["status", "reason"],
                            "properties": {
                                "status": {"const": "not_ready"},
                                "reason": {"type": "string"},
                            },
                        },
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Metrics, every name prefixed flow_agent_",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": _json("OpenAPI 3.1", {"type": "object"}), **_AUTH_ERRORS},
            }
        },
        "/api/v1/flows": {
            "get": {
                "summary": "The active flows, their versions and inputs",
                "operationId": "listFlows",
                "responses": {
                    "200": _json(
                        "Active flows by id",
                        {
                            "type": "object",
                            "required": ["flows"],
                            "properties": {
                                "flows": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Flow"},
                                }
                            },
                        },
                    ),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/v1/flows/{flow_id}/runs": {
            "post": {
                "summary": "Start a run; answers when it completes, fails or waits",
                "operationId": "startRun",
                "parameters": [_FLOW_ID],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/StartRequest"}
                        }
                    },
                },
                "responses": {
                    "201": _json("The run result", _RUN_REF, headers=_LOCATION, links=_RUN_LINKS),
                    **_BODY_ERRORS,
                    **_AUTH_ERRORS,
                    "404": _problem("No active flow with this id"),
                    "422": _problem("The inputs do not fit the flow; errors name each input"),
                },
            }
        },
        "/api/v1/runs": {
            "get": {
                "summary": "Top-level runs, newest first",
                "operationId": "listRuns",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "enum": ["running", "waiting", "completed", "failed", "cancelled"]
                        },
                    },
                    {"name": "flow", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    "200": _json(
                        "Run results",
                        {
                            "type": "object",
                            "required": ["runs"],
                            "properties": {"runs": {"type": "array", "items": _RUN_REF}},
                        },
                    ),
                    "400": _problem("A bad query parameter"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/v1/runs/{run_id}": {
            "get": {
                "summary": "One run's result",
                "operationId": "getRun",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _json("The run result", _RUN_REF),
                    **_AUTH_ERRORS,
                    "404": _problem("No such run"),
                },
            }
        },
        "/api/v1/runs/{run_id}/resume": {
            "post": {
                "summary": "Answer the page or step a run waits on",
                "operationId": "resumeRun",
                "parameters": [_RUN_ID],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}
                    },
                },
                "responses": {
                    "200": _json("The run result after the answer", _RUN_REF),
                    **_BODY_ERRORS,
                    **_AUTH_ERRORS,
                    "404": _problem("No such run"),
                    "409": _problem(
                        "Stale state token, or the run is not waiting for a person "
                        "(it has moved on); the run is unchanged"
                    ),
                    "422": _problem(
                        "Unknown outcome, unknown, missing or invalid field; the run is unchanged"
                    ),
                },
            }
        },
        "/api/v1/runs/{run_id}/cancel": {
            "post": {
                "summary": "Cancel a run (and the subflow run it waits on)",
                "operationId": "cancelRun",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _json("The cancelled run", _RUN_REF),
                    **_AUTH_ERRORS,
                    "404": _problem("No such run"),
                    "409": _problem("The run has already completed or failed"),
                },
            }
        },
        "/api/v1/runs/{run_id}/callback": {
            "post": {
                "summary": "A connector service finishes the action a run waits on",
                "description": "Authenticated by the single-use callback token the agent sent "
                "with the action call, not by the API token (docs/connectors.md).",
                "operationId": "runCallback",
                "parameters": [_RUN_ID],
                "security": [{"callback": []}],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Callback"}}
                    },
                },
                "responses": {
                    "200": _json("The run result after the action's answer", _RUN_REF),
                    **_BODY_ERRORS,
                    "401": _problem("No callback token, or not one minted for this run"),
                    "403": _AUTH_ERRORS["403"],
                    "404": _problem("No such run, or the agent takes no callbacks"),
                    "409": _problem("The token was used already, or the run no longer waits"),
                    "422": _problem("The body is not {outputs} or {error}"),
                },
            }
        },
        "/api/v1/hooks/{flow_id}": {
            "post": {
                "summary": "Start a run from a webhook trigger; the JSON body is the inputs",
                "operationId": "webhook",
                "parameters": [
                    _FLOW_ID,
                    {
                        "name": "X-Flow-Timestamp",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "Unix time in whole seconds (signed triggers)",
                    },
                    {
                        "name": "X-Flow-Signature",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "sha256=HEX of HMAC-SHA256(secret, X-Flow-Timestamp + '.' + "
                        "raw body) (signed triggers)",
                    },
                ],
                # A signed trigger authenticates by its signature, an unsigned one
                # by the bearer token: which applies depends on the flow.
                "security": [{}, {"bearer": []}],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "201": _json("The run result", _RUN_REF, headers=_LOCATION, links=_RUN_LINKS),
                    **_BODY_ERRORS,
                    "401": _problem(
                        "Missing or bad signature, a timestamp outside the 5-minute window, "
                        "or (unsigned trigger) no bearer token"
                    ),
                    "403": _AUTH_ERRORS["403"],
                    "404": _problem("No active flow with a webhook trigger by this id"),
                    "409": _problem("This signed delivery was already received"),
                    "422": _problem("The body is not an object of valid inputs"),
                    "503": _problem("The trigger's secret is not in the agent's secret store"),
                },
            }
        },
    },
}
