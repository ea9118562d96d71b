"""The http connector against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.connectors.http import HttpConnector, default_session

from .conftest import Serve
from .helpers import RecordingSleep, free_port, request

MakeConnector = Callable[..., HttpConnector]
LOGGER = "flow_agent.connectors.http"


def recording_app() -> tuple[web.Application, list[dict[str, Any]]]:
    """An app that records every request and answers 200 {"id": 7}."""
    seen: list[dict[str, Any]] = []

    async def handler(req: web.Request) -> web.StreamResponse:
        seen.append(
            {
                "headers": dict(req.headers),
                "body": await req.read(),
                "peer": req.transport.get_extra_info("peername") if req.transport else None,
            }
        )
        return web.json_response({"id": 7})

    app = web.Application()
    app.router.add_route("*", "/api/approvals", handler)
    return app, seen


def fresh(status: int, **kwargs: Any) -> Callable[[], web.StreamResponse]:
    return lambda: web.json_response({"error": "nope"}, status=status, **kwargs)


def sequence_app(
    makers: list[Callable[[], web.StreamResponse]], *, path: str = "/api/approvals"
) -> tuple[web.Application, list[dict[str, Any]]]:
    """Like recording_app, but builds a fresh response per request (the last repeats)."""
    seen: list[dict[str, Any]] = []

    async def handler(req: web.Request) -> web.StreamResponse:
        seen.append({"key": req.headers.get("Idempotency-Key"), "body": await req.read()})
        return makers[min(len(seen), len(makers)) - 1]()

    app = web.Application()
    app.router.add_route("*", path, handler)
    return app, seen


async def test_post_sends_json_body_query_headers_and_idempotency_key(
    serve: Serve, make_connector: MakeConnector
) -> None:
    async def handler(req: web.Request) -> web.Response:
        seen.append(
            {
                "method": req.method,
                "path": req.path,
                "query": list(req.query.items()),
                "headers": req.headers.copy(),
                "body": await req.read(),
            }
        )
        return web.Response(
            body=b'{"id": 7, "amount": 1.10, "tags": ["a"]}',
            content_type="application/json",
            headers={"X-Ticket": "T-1"},
        )

    seen: list[dict[str, Any]] = []
    app = web.Application()
    app.router.add_post("/api/approvals", handler)
    base = await serve(app)
    connector = make_connector()

    result = await connector.call(
        request(
            base + "/api/",  # a trailing slash on base_url must not double up
            "POST /approvals",
            body={"amount": Decimal("0.10"), "big": Decimal("1E+3"), "who": "Ann", "ok": True},
            query={"flag": True, "n": Decimal("1E+2"), "s": "x y", "tag": ["a", "b"], "gone": None},
            headers={"X-Custom": "yes"},
            idempotency_key="r_1:notify:3",
        )
    )

    assert result.ok, result.message
    assert result.status == 200
    assert result.body == {"id": 7, "amount": Decimal("1.10"), "tags": ["a"]}
    assert isinstance(result.body["amount"], Decimal)
    assert result.headers["x-ticket"] == "T-1"
    assert result.attempts == 1
    [call] = seen
    assert call["method"] == "POST"
    assert call["path"] == "/api/approvals"
    assert call["body"] == b'{"amount":0.10,"big":1000,"who":"Ann","ok":true}'
    assert call["query"] == [
        ("flag", "true"),
        ("n", "100"),
        ("s", "x y"),
        ("tag", "a"),
        ("tag", "b"),
    ]
    assert call["headers"]["X-Custom"] == "yes"
    assert call["headers"]["Idempotency-Key"] == "r_1:notify:3"
    assert call["headers"]["Content-Type"] == "application/json"


async def test_one_session_and_one_connection_serve_every_call(
    serve: Serve, make_connector: MakeConnector
) -> None:
    app, seen = recording_app()
    base = await serve(app)
    sessions: list[aiohttp.ClientSession] = []

    def factory(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        sessions.append(default_session(connector))
        return sessions[-1]

    connector = make_connector(session_factory=factory)
    for _ in range(3):
        assert (await connector.call(request(base, "GET /api/approvals"))).ok

    assert len(sessions) == 1
    assert len({call["peer"] for call in seen}) == 1  # keep-alive: one client socket
    assert "Content-Type" not in seen[0]["headers"]  # no body, no JSON content type
    assert seen[0]["body"] == b""


async def test_retries_5xx_with_backoff_and_the_same_key(
    serve: Serve, make_connector: MakeConnector, sleep: RecordingSleep
) -> None:
    app, seen = sequence_app(
        [fresh(500), fresh(503), fresh(502), lambda: web.json_response({"id": 9})]
    )
    base = await serve(app)
    connector = make_connector()

    result = await connector.call(
        request(base, "POST /api/approvals", body={"n": 1}, attempts=4, backoff=0.5)
    )

    assert result.ok
    assert result.body == {"id": 9}
    assert result.attempts == 4
    assert sleep.delays == [0.5, 1.0, 2.0]
    assert [call["key"] for call in seen] == ["r_test:notify:1"] * 4
    assert {call["body"] for call in seen} == {b'{"n":1}'}


async def test_gives_up_after_the_last_try_with_status_and_body(
    serve: Serve, make_connector: MakeConnector, sleep: RecordingSleep
) -> None:
    app, seen = sequence_app([fresh(503)])
    base = await serve(app)
    connector = make_connector()

    result = await connector.call(request(base, "POST /api/approvals", attempts=3))

    assert not result.ok
    assert result.status == 503
    assert result.body == {"error": "nope"}
    assert result.attempts == 3
    assert len(seen) == 3
    assert sleep.delays == [0.5, 1.0]
    assert result.message == (
        f"POST {base}/api/approvals answered 503 Service Unavailable after 3 tries"
    )


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_wait"),
    [
        (429, "2", 2.0),  # longer than the backoff: honoured
        (503, "3600", 30.0),  # far too long: capped
        (429, "0", 0.5),  # shorter than the backoff: the backoff stands
        (429, "soon", 0.5),  # unreadable: ignored
        (500, "20", 0.5),  # only 429 and 503 carry a meaningful Retry-After
    ],
)
async def test_retry_after_on_429_and_503(
    serve: Serve,
    make_connector: MakeConnector,
    sleep: RecordingSleep,
    status: int,
    retry_after: str,
    expected_wait: float,
) -> None:
    app, seen = sequence_app(
        [fresh(status, headers={"Retry-After": retry_after}), lambda: web.json_response({})]
    )
    base = await serve(app)

    result = await make_connector().call(request(base, "GET /api/approvals", attempts=2))

    assert result.ok
    assert len(seen) == 2
    assert sleep.delays == [expected_wait]


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
async def test_client_errors_are_not_retried(
    serve: Serve, make_connector: MakeConnector, sleep: RecordingSleep, status: int
) -> None:
    app, seen = sequence_app([fresh(status)])
    base = await serve(app)

    result = await make_connector().call(request(base, "PUT /api/approvals", attempts=5))

    assert not result.ok
    assert result.status == status
    assert result.attempts == 1
    assert len(seen) == 1
    assert sleep.delays == []
    assert result.message.endswith("after 1 try")


async def test_connection_refused_is_retried_then_a_fault_without_status(
    make_connector: MakeConnector, sleep: RecordingSleep
) -> None:
    port = free_port()

    result = await make_connector().call(
        request(f"http://127.0.0.1:{port}", "POST /api/approvals", attempts=3)
    )

    assert not result.ok
    assert result.status is None
    assert result.attempts == 3
    assert sleep.delays == [0.5, 1.0]
    assert result.message == (
        f"POST http://127.0.0.1:{port}/api/approvals failed after 3 tries: "
        f"cannot connect to 127.0.0.1:{port} (Connection refused)"
    )


async def test_a_try_that_outlasts_its_timeout_is_retried(
    serve: Serve, make_connector: MakeConnector, sleep: RecordingSleep
) -> None:
    arrived: list[str | None] = []

    async def hang(req: web.Request) -> web.Response:
        arrived.append(req.headers.get("Idempotency-Key"))
        await asyncio.sleep(60)  # cancelled when the client gives up
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/slow", hang)
    base = await serve(app)

    result = await make_connector().call(request(base, "GET /slow", attempts=2, timeout=0.2))

    assert not result.ok
    assert result.status is None
    assert result.attempts == 2
    assert arrived == ["r_test:notify:1", "r_test:notify:1"]
    assert sleep.delays == [0.5]
    assert result.message == f"GET {base}/slow failed after 2 tries: no answer within 0.2 s"


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_an_empty_body_is_none(
    serve: Serve, make_connector: MakeConnector, status: int
) -> None:
    app, _ = sequence_app([lambda: web.Response(status=status)])
    base = await serve(app)

    result = await make_connector().call(request(base, "DELETE /api/approvals"))

    assert result.ok, result.message
    assert result.status == status
    assert result.body is None


@pytest.mark.parametrize(
    "payload", [b"<html>oops</html>", b'{"a": 1', b"NaN", b"\xff\xfe\x00garbage"]
)
async def test_a_2xx_body_that_is_not_json_is_a_fault_without_retry(
    serve: Serve, make_connector: MakeConnector, payload: bytes
) -> None:
    app, seen = sequence_app([lambda: web.Response(body=payload, content_type="text/html")])
    base = await serve(app)

    result = await make_connector().call(request(base, "GET /api/approvals", attempts=3))

    assert not result.ok
    assert result.status == 200
    assert result.body is None
    assert len(seen) == 1
    assert result.message.startswith(f"response from GET {base}/api/approvals is not JSON: ")
    assert "oops" not in result.message and "garbage" not in result.message


async def test_a_streamed_body_over_the_limit_is_abandoned_early(
    serve: Serve, make_connector: MakeConnector
) -> None:
    total = 64 * 1024 * 1024
    written: list[int] = [0]
    finished = asyncio.Event()

    async def flood(req: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to check up front
        response.content_type = "application/json"
        await response.prepare(req)
        chunk = b" " * 65536
        try:
            while written[0] < total:
                await response.write(chunk)
                written[0] += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            finished.set()
        return response

    app = web.Application()
    app.router.add_get("/big", flood)
    base = await serve(app)

    result = await make_connector(max_response_bytes=256 * 1024).call(request(base, "GET /big"))

    assert not result.ok
    assert result.status == 200
    assert result.message == f"GET {base}/big: response exceeds the 256 KiB limit"
    await asyncio.wait_for(finished.wait(), 10)
    assert written[0] < total  # the client hung up instead of draining 64 MiB


async def test_a_content_length_over_the_limit_is_refused_before_reading(
    serve: Serve, make_connector: MakeConnector
) -> None:
    async def promise_much(req: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 10 * 1024 * 1024 + 1
        await response.prepare(req)
        await response.write(b"{")
        await asyncio.sleep(60)  # never sends the rest: a reading client would time out
        return response

    app = web.Application()
    app.router.add_get("/big", promise_much)
    base = await serve(app)

    result = await make_connector().call(request(base, "GET /big", timeout=30))

    assert not result.ok
    assert result.message == f"GET {base}/big: response exceeds the 10 MiB limit"


async def test_an_oversized_error_body_keeps_the_status(
    serve: Serve, make_connector: MakeConnector
) -> None:
    app, _ = sequence_app([lambda: web.Response(status=500, body=b"x" * 5000)])
    base = await serve(app)

    result = await make_connector(max_response_bytes=1000).call(request(base, "GET /api/approvals"))

    assert not result.ok
    assert result.status == 500
    assert result.body is None
    assert "answered 500 Internal Server Error" in result.message


async def test_secrets_are_redacted_from_messages_and_logs(
    serve: Serve, make_connector: MakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t/T0ken"
    secret2 = "other-s3cr3t"
    app, _ = sequence_app([fresh(503)], path="/t/{token}/x")
    base = await serve(app)
    connector = make_connector()
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    # The secret in the path (URL-encoded on the wire), a header and the body.
    answered = await connector.call(
        request(
            base,
            "POST /t/s3cr3t%2FT0ken/x",
            headers={"Authorization": f"Bearer {secret}"},
            body={"note": "body-marker"},
            query={"q": "query-marker"},
            redact=(secret,),
        )
    )
    # A secret in the base URL's path and (unredacted) credentials, no server there.
    port = free_port()
    refused = await connector.call(
        request(
            f"http://user:pw-marker@127.0.0.1:{port}/k/{secret2}",
            "GET /x",
            redact=(secret2,),
        )
    )

    assert answered.status == 503
    assert answered.message == f"POST {base}/t/***/x answered 503 Service Unavailable after 1 try"
    assert refused.status is None
    assert refused.message.startswith(f"GET http://127.0.0.1:{port}/k/***/x failed after 1 try")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert len(caplog.records) == 2  # one line per try
    forbidden_words = (secret, "s3cr3t%2FT0ken", secret2, "pw-marker", "Bearer")
    for forbidden in (*forbidden_words, "body-marker", "query-marker"):
        assert forbidden not in logged
        assert forbidden not in answered.message + refused.message
    assert "***" in logged


async def test_logs_one_line_per_try_with_method_url_and_status(
    serve: Serve, make_connector: MakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = sequence_app([fresh(500), lambda: web.json_response({})])
    base = await serve(app)
    caplog.set_level(logging.INFO, logger=LOGGER)

    await make_connector().call(request(base, "GET /api/approvals", query={"page": 2}, attempts=3))

    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 2
    assert lines[0].startswith(f"GET {base}/api/approvals -> 500 in ")
    assert lines[0].endswith("(try 1 of 3)")
    assert lines[1].startswith(f"GET {base}/api/approvals -> 200 in ")
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [
        logging.WARNING,
        logging.INFO,
    ]


@pytest.mark.parametrize(
    ("config", "action", "fragment"),
    [
        ({}, "GET /x", "connector erp has no base_url"),
        ({"base_url": "ftp://files.example/in"}, "GET /x", "must be an http or https URL"),
        ({"base_url": "file:///etc"}, "GET /passwd", "must be an http or https URL"),
        ({"base_url": "http://127.0.0.1:9"}, "/x", "does not start with an HTTP method"),
    ],
)
async def test_unusable_requests_are_faults_without_a_call(
    make_connector: MakeConnector,
    config: dict[str, Any],
    action: str,
    fragment: str,
) -> None:
    base = request("http://unused", action)
    broken = type(base)(**{**_fields(base), "config": config})

    result = await make_connector().call(broken)

    assert not result.ok
    assert result.status is None
    assert fragment in result.message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"n": Decimal("NaN")}, "NaN is not a JSON number"),
        ({"n": float("inf")}, "inf is not a JSON number"),
        ({1: "x"}, "non-text key"),
        ({"s": {1, 2}}, "holds a set"),
    ],
)
async def test_a_body_json_cannot_carry_is_a_fault(
    make_connector: MakeConnector, body: Any, fragment: str
) -> None:
    result = await make_connector().call(request("http://127.0.0.1:9", "POST /x", body=body))

    assert not result.ok
    assert fragment in result.message


async def test_a_closed_connector_answers_with_a_fault(
    serve: Serve, make_connector: MakeConnector
) -> None:
    app, seen = recording_app()
    base = await serve(app)
    connector = make_connector()
    assert (await connector.call(request(base, "GET /api/approvals"))).ok

    await connector.close()
    result = await connector.call(request(base, "GET /api/approvals"))

    assert not result.ok
    assert result.message == "the http connector is closed"
    assert len(seen) == 1


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__dataclass_fields__}
