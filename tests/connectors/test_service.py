"""The service connector against real local services (the bundled example among them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from ipaddress import ip_network
from typing import Any

import pytest
from aiohttp import web

from agent.connectors.guard import NetworkGuard
from agent.connectors.service import ServiceConnector, parse_metadata

from .conftest import Serve
from .helpers import RecordingSleep
from .servicehelpers import counting, example_service, service_request

TOKEN = "svc-token-5b2e"


class Issuer:
    """Callbacks to a fixed URL; the real one is agent.runtime.callbacks.CallbackIssuer."""

    def callback(self, run_id: str, visit: int) -> dict[str, str]:
        return {"url": f"http://127.0.0.1:9/{run_id}", "token": f"tok-{visit}"}


@pytest.fixture
async def make_service(
    sleep: RecordingSleep,
) -> AsyncIterator[Callable[..., ServiceConnector]]:
    made: list[ServiceConnector] = []

    def make(*, guard: NetworkGuard | None = None, **options: Any) -> ServiceConnector:
        connector = ServiceConnector(guard=guard or NetworkGuard(), sleep=sleep, **options)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        await connector.close()


async def test_a_done_action_returns_its_outputs_and_metadata_is_cached(
    serve: Serve, make_service: Callable[..., ServiceConnector]
) -> None:
    app = example_service().make_app(token=TOKEN, callback_delay=None)
    hits = counting(app)
    url = await serve(app)
    service = make_service()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    outputs = []
    for visit, amount in ((1, 100), (2, 0.1), (2, 0.1)):
        result = await service.call(
            service_request(url, "quote", {"amount": amount}, headers=auth, visit=visit)
        )
        assert result.ok, result.message
        outputs.append(result.outputs)
    assert outputs[0] == {"total": Decimal("120.0"), "currency": "EUR"}
    assert outputs[1] == {"total": Decimal("0.12"), "currency": "EUR"}
    # The same idempotency key again: the example answers what it answered.
    assert outputs[2] == outputs[1]
    assert hits["/metadata"] == 1
    assert hits["/actions/quote"] == 3


async def test_an_unknown_action_looks_again_then_faults_listing_the_actions(
    serve: Serve, make_service: Callable[..., ServiceConnector]
) -> None:
    app = example_service().make_app(callback_delay=None)
    hits = counting(app)
    url = await serve(app)
    service = make_service()
    assert (await service.call(service_request(url, "quote", {"amount": 1}))).ok
    result = await service.call(service_request(url, "refund", {"amount": 1}))
    assert not result.ok
    assert result.message == (
        f"the service at {url} has no action 'refund' (its actions: approve, quote)"
    )
    assert hits["/metadata"] == 2  # a cached copy is not trusted for a missing action
    assert "/actions/refund" not in hits


async def test_stale_metadata_is_fetched_again(
    serve: Serve, make_service: Callable[..., ServiceConnector]
) -> None:
    app = example_service().make_app(callback_delay=None)
    hits = counting(app)
    url = await serve(app)
    now = [0.0]
    service = make_service(clock=lambda: now[0], metadata_ttl=60)
    await service.call(service_request(url, "quote", {"amount": 1}))
    now[0] = 59.0
    await service.call(service_request(url, "quote", {"amount": 1}))
    assert hits["/metadata"] == 1
    now[0] = 61.0
    await service.call(service_request(url, "quote", {"amount": 1}))
    assert hits["/metadata"] == 2


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "action 'quote' needs the input(s) amount"),
        ({"amount": None}, "needs the input(s) amount"),
        ({"amount": 1, "amuont": 2}, "takes no input(s) amuont (its inputs: amount, currency)"),
    ],
)
async def test_inputs_are_checked_against_the_metadata(
    serve: Serve,
    make_service: Callable[..., ServiceConnector],
    inputs: dict[str, Any],
    message: str,
) -> None:
    app = example_service().make_app(callback_delay=None)
    hits = counting(app)
    url = await serve(app)
    result = await make_service().call(service_request(url, "quote", inputs))
    assert not result.ok
    assert message in result.message
    assert "/actions/quote" not in hits


async def test_the_request_carries_run_element_key_inputs_and_callback(
    serve: Serve, make_service: Callable[..., ServiceConnector]
) -> None:
    seen: list[tuple[dict[str, Any], str | None]] = []
    metadata_keys: list[str | None] = []

    async def metadata(request: web.Request) -> web.Response:
        metadata_keys.append(request.headers.get("Idempotency-Key"))
        return web.json_response({"actions": [{"name": "go"}]})

    async def go(request: web.Request) -> web.Response:
        seen.append((await request.json(), request.headers.get("Idempotency-Key")))
        return web.json_response({"status": "wait"})

    app = web.Application()
    app.router.add_post("/api/metadata", metadata)
    app.router.add_post("/api/actions/go", go)
    url = await serve(app) + "/api"
    result = await make_service(callbacks=Issuer()).call(
        service_request(url, "go", {"x": [1, {"y": None}]})
    )
    assert result.ok and result.wait
    body, key = seen[0]
    assert body == {
        "run_id": "r_svc",
        "element": "ask",
        "idempotency_key": "r_svc:3",
        "inputs": {"x": [1, {"y": None}]},
        "callback": {"url": "http://127.0.0.1:9/r_svc", "token": "tok-3"},
    }
    assert key == "r_svc:3"
    # The key belongs to the action call only.
    assert metadata_keys == [None]


async def test_wait_without_a_callback_url_is_a_fault(
    serve: Serve, make_service: Callable[..., ServiceConnector]
) -> None:
    url = await serve(example_service().make_app(callback_delay=None))
    # The example itself refuses to wait without a callback.
    result = await make_service().call(service_request(url, "approve", {"amount": 5}))
    assert not result.ok
    assert result.message.endswith("failed: approve needs a callback URL")

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"actions": [{"name": "later"}]})

    async def later(request: web.Request) -> web.Response:
        return web.json_response({"status": "wait"})

    app = web.Application()
    app.router.add_post("/metadata", metadata)
    app.router.add_post("/actions/later", later)
    other = await serve(app)
    result = await make_service().call(service_request(other, "later"))
    assert not result.ok
    assert "asked to answer later, but this agent has no callback URL" in result.message


def _answering(answer: Any, *, status: int = 200) -> web.Application:
    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"actions": [{"name": "go", "inputs": []}]})

    async def go(request: web.Request) -> web.Response:
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/metadata", metadata)
    app.router.add_post("/actions/go", go)
    return app


@pytest.mark.parametrize(
    ("answer", "status", "message"),
    [
        ({"status": "error", "message": "ledger closed"}, 200, "failed: ledger closed"),
        ({"status": "error"}, 200, "failed: no message"),
        ({"status": "maybe"}, 200, "answered neither done, wait nor error"),
        ([1, 2], 200, "answered neither done, wait nor error"),
        ({"status": "done", "outputs": [1]}, 200, "outputs that are not an object"),
        ({"message": "no such ledger"}, 404, "answered 404 Not Found after 1 try: no such ledger"),
    ],
)
async def test_error_answers_are_faults_with_the_service_s_reason(
    serve: Serve,
    make_service: Callable[..., ServiceConnector],
    answer: Any,
    status: int,
    message: str,
) -> None:
    url = await serve(_answering(answer, status=status))
    result = await make_service().call(service_request(url, "go"))
    assert not result.ok
    assert message in result.message


async def test_5xx_is_retried_with_the_same_key(
    serve: Serve, make_service: Callable[..., ServiceConnector], sleep: RecordingSleep
) -> None:
    keys: list[str] = []

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"actions": [{"name": "go"}]})

    async def go(request: web.Request) -> web.Response:
        keys.append((await request.json())["idempotency_key"])
        if len(keys) < 3:
            return web.json_response({"message": "busy"}, status=503)
        return web.json_response({"status": "done", "outputs": {"n": len(keys)}})

    app = web.Application()
    app.router.add_post("/metadata", metadata)
    app.router.add_post("/actions/go", go)
    url = await serve(app)
    result = await make_service().call(service_request(url, "go", attempts=3))
    assert result.ok and result.outputs == {"n": 3}
    assert result.attempts == 3
    assert keys == ["r_svc:3"] * 3
    assert sleep.delays == [0.5, 1.0]


async def test_bad_metadata_is_a_fault(
    serve: Serve, make_service: Callable[..., ServiceConnector]
) -> None:
    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"actions": {"go": {}}})

    app = web.Application()
    app.router.add_post("/metadata", metadata)
    url = await serve(app)
    result = await make_service().call(service_request(url, "go"))
    assert not result.ok
    assert "metadata of the service" in result.message and "is malformed" in result.message


def test_metadata_parsing() -> None:
    meta = parse_metadata(
        {
            "actions": [
                {"name": "a", "inputs": [{"name": "x", "required": True}, {"name": "y"}]},
                {"name": "b", "outputs": [{"name": "z"}]},
            ]
        }
    )
    assert meta.actions["a"].inputs == {"x": True, "y": False}
    assert meta.actions["b"].inputs is None
    assert meta.actions["b"].outputs == ("z",)
    for bad in ({}, {"actions": [{}]}, {"actions": [{"name": "a", "inputs": "x"}]}):
        with pytest.raises(ValueError):
            parse_metadata(bad)


@pytest.mark.parametrize(
    ("url", "action"),
    [
        ("ftp://example.test/svc", "go"),
        ("http://example.test/svc?x=1", "go"),
        (None, "go"),
        ("http://127.0.0.1:9", "../admin"),
        ("http://127.0.0.1:9", "a/b"),
    ],
)
async def test_bad_urls_and_action_names_fault_without_a_request(
    make_service: Callable[..., ServiceConnector], url: Any, action: str
) -> None:
    result = await make_service().call(service_request(url, action))
    assert not result.ok
    assert "url must" in result.message or "not a service action name" in result.message


async def test_the_network_guard_refuses_denied_addresses(
    serve: Serve, make_service: Callable[..., ServiceConnector]
) -> None:
    url = await serve(example_service().make_app(callback_delay=None))
    guard = NetworkGuard(deny=[ip_network("127.0.0.0/8")])
    result = await make_service(guard=guard).call(service_request(url, "quote", {"amount": 1}))
    assert not result.ok
    assert "refused" in result.message and "127.0.0.0/8" in result.message


async def test_a_redirect_to_a_denied_address_is_refused(
    serve: Serve, make_service: Callable[..., ServiceConnector]
) -> None:
    async def metadata(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("http://169.254.169.254/latest/meta-data")

    app = web.Application()
    app.router.add_post("/metadata", metadata)
    url = await serve(app)
    result = await make_service().call(service_request(url, "go"))
    assert not result.ok
    assert "169.254.169.254" in result.message and "denied network" in result.message


async def test_secrets_in_headers_are_redacted_from_faults(
    serve: Serve, make_service: Callable[..., ServiceConnector]
) -> None:
    async def metadata(request: web.Request) -> web.Response:
        # A careless service that quotes the credential back.
        auth = request.headers.get("Authorization", "")
        return web.json_response({"message": f"token {auth} is not valid"}, status=401)

    app = web.Application()
    app.router.add_post("/metadata", metadata)
    url = await serve(app)
    result = await make_service().call(
        service_request(url, "go", headers={"Authorization": f"Bearer {TOKEN}"}, redact=(TOKEN,))
    )
    assert not result.ok
    assert TOKEN not in result.message
    assert "token Bearer *** is not valid" in result.message
