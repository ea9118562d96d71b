"""Errors of the local API as RFC 9457 problem details.

A handler raises ``Problem``; the error middleware turns it (and anything
else that escapes a handler) into an ``application/problem+json`` response.
``type`` is ``urn:flow-agent:problem:<code>``: a stable name a client can
switch on without parsing the English of ``detail``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from agent.errors import OperationError

PROBLEM_JSON = "application/problem+json"


def problem_type(code: str) -> str:
    return f"urn:flow-agent:problem:{code}"


class Problem(OperationError):
    """An HTTP error with a problem-details body."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})


def problem_body(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return body


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = problem_body(status, code, detail, instance=instance, errors=errors)
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def from_problem(problem: Problem, *, instance: str | None = None) -> web.Response:
    return problem_response(
        problem.status,
        problem.code,
        problem.detail,
        instance=instance,
        errors=problem.errors,
        headers=problem.headers,
    )


# aiohttp's own refusals (no route, wrong method, body too large) by status.
HTTP_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
}
