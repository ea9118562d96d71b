"""Webhook triggers (HMAC, replay window), health probes and Prometheus metrics."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from agent.api import Metrics, create_app
from agent.api.webhooks import ReplayGuard, sign
from agent.connectors.registry import default_registry
from agent.errors import StoreError
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore

from .conftest import SECRETS, TOKEN, Clock, serve
from .test_api_runs import problem

Client = TestClient[web.Request, web.Application]
SECRET = SECRETS["hook-secret"]


def signed(body: bytes, timestamp: float, *, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(timestamp))
    return {
        "Content-Type": "application/json",
        "X-Flow-Timestamp": stamp,
        "X-Flow-Signature": sign(secret, stamp, body),
    }


async def test_a_signed_delivery_starts_a_run(client: Client, clock: Clock) -> None:
    body = json.dumps({"n": 4}).encode()
    response = await client.post("/api/v1/hooks/double", data=body, headers=signed(body, clock()))
    assert response.status == 201, await response.text()
    result = await response.json()
    assert result["status"] == "completed" and result["outputs"] == {"doubled": 8}


async def test_signature_refusals(client: Client, clock: Clock, store: SqliteStore) -> None:
    url = "/api/v1/hooks/double"
    body = b'{"n": 4}'
    good = signed(body, clock())
    # Missing headers.
    for drop in ("X-Flow-Timestamp", "X-Flow-Signature"):
        headers = {k: v for k, v in good.items() if k != drop}
        reply = await problem(
            await client.post(url, data=body, headers=headers), 401, "signature_missing"
        )
        assert drop in reply["detail"]
    # A signature by another secret, over another body, or another timestamp.
    for headers, data in (
        (signed(body, clock(), secret="not-the-secret"), body),
        (good, b'{"n": 5}'),
        ({**good, "X-Flow-Timestamp": str(int(clock()) + 1)}, body),
        ({**good, "X-Flow-Signature": "sha256=" + "0" * 64}, body),
        ({**good, "X-Flow-Signature": "garbage"}, body),
        ({**good, "X-Flow-Timestamp": "yesterday"}, body),
    ):
        await problem(await client.post(url, data=data, headers=headers), 401, "signature_invalid")
    # Correctly signed, but outside the five-minute window either way.
    for skew in (-301, 301):
        stale = signed(body, clock() + skew)
        await problem(await client.post(url, data=body, headers=stale), 401, "signature_expired")
    assert store.list_runs() == []
    # Inside the window; then the very same delivery again is a replay.
    fresh = signed(body, clock() - 299)
    assert (await client.post(url, data=body, headers=fresh)).status == 201
    await problem(await client.post(url, data=body, headers=fresh), 409, "delivery_replayed")
    assert len(store.list_runs()) == 1


async def test_a_signed_delivery_with_bad_inputs_is_422(client: Client, clock: Clock) -> None:
    url = "/api/v1/hooks/double"
    for body in (b'{"n": "four"}', b'{"nn": 1}', b"[1, 2]"):
        response = await client.post(url, data=body, headers=signed(body, clock()))
        await problem(response, 422, "invalid_inputs")
    body = b'{"n": '
    await problem(
        await client.post(url, data=body, headers=signed(body, clock())), 400, "malformed_json"
    )


async def test_only_flows_with_a_webhook_trigger_take_deliveries(
    client: Client, clock: Clock
) -> None:
    body = b"{}"
    for flow in ("form", "no-such-flow"):
        response = await client.post(
            f"/api/v1/hooks/{flow}", data=body, headers=signed(body, clock())
        )
        await problem(response, 404, "webhook_not_found")


async def test_a_trigger_whose_secret_is_not_set_refuses(client: Client) -> None:
    response = await client.post("/api/v1/hooks/unconfigured-hook", json={})
    body = await problem(response, 503, "webhook_unconfigured")
    assert "nobody-set-this" not in body["detail"]


async def test_unsigned_webhooks_need_the_bearer_token_when_there_is_one(
    client: Client, guarded: Client, clock: Clock
) -> None:
    assert (await client.post("/api/v1/hooks/open-hook", json={"n": 1})).status == 201
    await problem(await guarded.post("/api/v1/hooks/open-hook", json={"n": 1}), 401, "unauthorized")
    response = await guarded.post(
        "/api/v1/hooks/open-hook", json={"n": 1}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status == 201
    # A signed one authenticates itself: no bearer token needed.
    body = b'{"n": 2}'
    response = await guarded.post("/api/v1/hooks/double", data=body, headers=signed(body, clock()))
    assert response.status == 201


def test_replay_guard_forgets_old_entries_and_stays_bounded() -> None:
    guard = ReplayGuard(window=300, limit=3)
    assert guard.first_time("sha256=a", now=0)
    assert not guard.first_time("SHA256=A", now=10)
    assert guard.first_time("sha256=a", now=1000)  # long past the window
    for name in "bcd":
        assert guard.first_time(f"sha256={name}", now=1001)
    assert len(guard._seen) <= 3
    guard.forget("sha256=d")
    assert guard.first_time("sha256=d", now=1002)


async def test_livez_and_readyz(runner: Runner) -> None:
    state: dict[str, Any] = {"answer": "flows are not synced yet"}
    c = await serve(create_app(runner=runner, ready=lambda: state["answer"]))
    try:
        assert (await c.get("/livez")).status == 200
        response = await c.get("/readyz")
        assert response.status == 503
        assert await response.json() == {
            "status": "not_ready",
            "reason": "flows are not synced yet",
        }
        state["answer"] = False
        assert (await (await c.get("/readyz")).json())["reason"] == "not ready"
        state["answer"] = True
        response = await c.get("/readyz")
        assert response.status == 200 and await response.json() == {"status": "ready"}
    finally:
        await c.close()


async def test_a_broken_readiness_check_is_not_ready(runner: Runner) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    c = await serve(create_app(runner=runner, ready=broken))
    try:
        response = await c.get("/readyz")
        assert response.status == 503
        assert "RuntimeError" in (await response.json())["reason"]
    finally:
        await c.close()


async def test_metrics_count_runs_and_requests(client: Client, clock: Clock) -> None:
    await client.post("/api/v1/flows/double/runs", json={"inputs": {"n": 1}})
    await client.post("/api/v1/flows/fails/runs", json={})
    waiting = await (await client.post("/api/v1/flows/form/runs", json={})).json()
    await client.post(f"/api/v1/runs/{waiting['run_id']}/cancel")
    await client.get("/api/v1/runs/r_missing")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    for line in (
        'flow_agent_runs_started_total{flow="double"} 1.0',
        'flow_agent_runs_started_total{flow="fails"} 1.0',
        'flow_agent_runs_started_total{flow="form"} 1.0',
        'flow_agent_runs_completed_total{flow="double"} 1.0',
        'flow_agent_runs_failed_total{flow="fails"} 1.0',
        'flow_agent_runs_cancelled_total{flow="form"} 1.0',
        'flow_agent_api_requests_total{method="POST",route="/api/v1/flows/{flow_id}/runs",'
        'status="201"} 3.0',
        'flow_agent_api_requests_total{method="GET",route="/api/v1/runs/{run_id}",'
        'status="404"} 1.0',
    ):
        assert line in text, line
    assert 'flow_agent_runs_completed_total{flow="form"}' not in text


async def test_each_app_has_its_own_registry(runner: Runner) -> None:
    first, second = Metrics(), Metrics()
    first.request(route="/x", method="GET", status=200)
    assert b"/x" in first.render()[0] and b"/x" not in second.render()[0]


class Refusing:
    """An observer that refuses every commit, as a full outbox does."""

    def committed(self, **_: Any) -> None:
        raise StoreError("the outbox is full")


async def test_wrapped_metrics_count_after_the_inner_observer(
    store: SqliteStore, clock: Clock
) -> None:
    metrics = Metrics()
    seen: list[str] = []

    class Recording:
        def committed(self, *, result: dict[str, Any], **_: Any) -> None:
            seen.append(result["status"])

    registry = default_registry()
    try:
        for inner in (Recording(), Refusing()):
            runner = Runner(
                store=store,
                catalog=Catalog(store, clock=clock),
                connectors=registry,
                observer=metrics.wrap(inner),
                clock=clock,
            )
            with contextlib.suppress(StoreError):
                await runner.start("double", {"n": 1})
    finally:
        await registry.close_all()
    assert seen == ["completed"]
    text = metrics.render()[0].decode()
    assert 'flow_agent_runs_started_total{flow="double"} 1.0' in text  # not 2: one refused
    assert len(store.list_runs()) == 1
