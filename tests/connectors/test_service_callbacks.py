"""A service that answers later: runs that wait on a callback, tokens, and late answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.connectors.registry import default_registry
from agent.flow.model import parse_flow
from agent.runtime.callbacks import (
    CALLBACK_KEY_FILE,
    CallbackIssuer,
    CallbackRefused,
    complete_callback,
)
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore

from .conftest import Serve
from .servicehelpers import EXAMPLES, example_service

TOKEN = "svc-token-c4a1"


def _flow(url: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXAMPLES / "connector-service" / "flow.json").read_text())
    doc["connectors"]["approvals"]["url"] = url
    return doc


@asynccontextmanager
async def agent(
    state_dir: Path, doc: dict[str, Any], *, base_url: str | None = "http://127.0.0.1:8355"
) -> AsyncIterator[tuple[Runner, CallbackIssuer]]:
    """A runner on ``state_dir`` with services' callbacks enabled (as the daemon sets up)."""
    store = SqliteStore.open(state_dir, synchronous="off")
    issuer = CallbackIssuer.for_state_dir(state_dir, base_url=base_url)
    registry = default_registry(callbacks=issuer, plugins=False)
    secrets = {"approvals-token": TOKEN}
    try:
        runner = Runner(
            store=store,
            catalog=Catalog(store, local=[parse_flow(doc)]),
            connectors=registry,
            secrets=secrets,
        )
        yield runner, issuer
    finally:
        await registry.close_all()
        store.close()


@pytest.fixture
async def service(serve: Serve) -> tuple[str, web.Application]:
    app = example_service().make_app(token=TOKEN, callback_delay=None)
    return await serve(app), app


async def test_a_run_waits_on_the_service_then_completes_with_its_outputs(
    service: tuple[str, web.Application], tmp_path: Path
) -> None:
    url, app = service
    pending = app[example_service().PENDING]
    async with agent(tmp_path / "state", _flow(url)) as (runner, issuer):
        waiting = await runner.start("service-approval", {"amount": 500})
        assert waiting["status"] == "waiting"
        assert waiting["path"] == ["quote", "approve"]
        assert waiting["waiting"]["kind"] == "callback"
        assert waiting["waiting"]["element"] == "approve"
        assert waiting["outputs"]["total"] == 600
        [(callback, outputs)] = pending
        run_id = waiting["run_id"]
        assert callback["url"] == f"http://127.0.0.1:8355/api/v1/runs/{run_id}/callback"
        assert callback["token"].startswith("cb1.")
        done = await complete_callback(runner, run_id, callback["token"], outputs, issuer=issuer)
    assert done["status"] == "completed", done
    assert done["outputs"] == {"total": 600, "approved": True, "ticket": "T-2"}
    assert done["path"] == ["quote", "approve", "done"]


async def test_a_token_works_once_and_only_for_its_run(
    service: tuple[str, web.Application], tmp_path: Path
) -> None:
    url, app = service
    pending = app[example_service().PENDING]
    async with agent(tmp_path / "state", _flow(url)) as (runner, issuer):
        first = await runner.start("service-approval", {"amount": 1})
        second = await runner.start("service-approval", {"amount": 2})
        (cb1, out1), (cb2, _) = pending
        with pytest.raises(CallbackRefused) as wrong_run:
            await complete_callback(runner, second["run_id"], cb1["token"], out1, issuer=issuer)
        assert wrong_run.value.code == "invalid_token"
        for forged in ("", "cb1.5.AAAA", cb1["token"] + "x", "cb2" + cb1["token"][3:]):
            with pytest.raises(CallbackRefused) as bad:
                await complete_callback(runner, first["run_id"], forged, out1, issuer=issuer)
            assert bad.value.code == "invalid_token"
        assert (await runner.result_of(first["run_id"]))["status"] == "waiting"
        done = await complete_callback(runner, first["run_id"], cb1["token"], out1, issuer=issuer)
        assert done["status"] == "completed"
        with pytest.raises(CallbackRefused) as replay:
            await complete_callback(runner, first["run_id"], cb1["token"], out1, issuer=issuer)
        assert replay.value.code == "used"
        with pytest.raises(CallbackRefused) as unknown:
            await complete_callback(runner, "r_nope", issuer.token("r_nope", 1), {}, issuer=issuer)
        assert unknown.value.code == "unknown_run"
        assert (await runner.result_of(second["run_id"]))["status"] == "waiting"
        assert cb2["token"] != cb1["token"]


async def test_a_reported_error_takes_the_fault_path(
    service: tuple[str, web.Application], tmp_path: Path
) -> None:
    url, app = service
    async with agent(tmp_path / "state", _flow(url)) as (runner, issuer):
        run = await runner.start("service-approval", {"amount": 1})
        [(callback, _)] = app[example_service().PENDING]
        result = await complete_callback(
            runner, run["run_id"], callback["token"], issuer=issuer, error="desk closed"
        )
    assert result["status"] == "failed"
    assert result["error"] == {
        "element": "failed",
        "message": "the service reported: desk closed",
    }


async def test_the_callback_survives_an_agent_restart(
    service: tuple[str, web.Application], tmp_path: Path
) -> None:
    url, app = service
    state = tmp_path / "state"
    async with agent(state, _flow(url)) as (runner, first_issuer):
        run = await runner.start("service-approval", {"amount": 1})
    [(callback, outputs)] = app[example_service().PENDING]
    assert (state / CALLBACK_KEY_FILE).stat().st_mode & 0o777 == 0o600
    async with agent(state, _flow(url)) as (runner, issuer):
        # The same key: the restarted agent mints and accepts the same token.
        assert issuer.token(run["run_id"], 2) == first_issuer.token(run["run_id"], 2)
        done = await complete_callback(
            runner, run["run_id"], callback["token"], outputs, issuer=issuer
        )
    assert done["status"] == "completed"


async def test_a_callback_that_overtakes_the_wait_answer_is_applied_after_it(
    serve: Serve, tmp_path: Path
) -> None:
    """The service calls back before its own "wait" answer reached the agent."""
    box: dict[str, Any] = {}

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"actions": [{"name": "quote"}, {"name": "approve"}]})

    async def act(request: web.Request) -> web.Response:
        body = await request.json()
        if request.match_info["name"] == "quote":
            return web.json_response({"status": "done", "outputs": {"total": 5}})
        runner, issuer = box["agent"]
        box["early"] = asyncio.create_task(
            complete_callback(
                runner,
                body["run_id"],
                body["callback"]["token"],
                {"approved": True, "ticket": "early"},
                issuer=issuer,
            )
        )
        await asyncio.sleep(0)  # let the callback start: it must wait for the run's lock
        return web.json_response({"status": "wait"})

    app = web.Application()
    app.router.add_post("/metadata", metadata)
    app.router.add_post("/actions/{name}", act)
    url = await serve(app)
    async with agent(tmp_path / "state", _flow(url)) as pair:
        box["agent"] = pair
        runner, _ = pair
        started = await runner.start("service-approval", {"amount": 1})
        done = await box["early"]
    assert started["status"] == "waiting"
    assert done["status"] == "completed"
    assert done["outputs"]["ticket"] == "early"


async def test_the_example_service_calls_back_over_http(serve: Serve, tmp_path: Path) -> None:
    """End to end: the example posts to a callback route shaped as docs/connectors.md says."""
    finished: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    box: dict[str, Any] = {}

    async def callback_route(request: web.Request) -> web.Response:
        # What the local API's route does: bearer token, JSON outputs, complete_callback.
        runner, issuer = box["agent"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        body = await request.json()
        try:
            result = await complete_callback(
                runner, request.match_info["run_id"], token, body.get("outputs"), issuer=issuer
            )
        except CallbackRefused as exc:
            return web.json_response({"detail": exc.message}, status=409)
        await finished.put(result)
        return web.json_response(result)

    api = web.Application()
    api.router.add_post("/api/v1/runs/{run_id}/callback", callback_route)
    api_url = await serve(api)
    url = await serve(example_service().make_app(token=TOKEN, callback_delay=0))
    async with agent(tmp_path / "state", _flow(url), base_url=api_url) as pair:
        box["agent"] = pair
        runner, _ = pair
        waiting = await runner.start("service-approval", {"amount": 900})
        assert waiting["status"] == "waiting"
        done = await finished.get()
    assert done["run_id"] == waiting["run_id"]
    assert done["status"] == "completed"
    assert done["outputs"]["approved"] is False  # 900 * 1.2 is over the desk's limit


def test_tokens_are_deterministic_per_run_and_visit_and_keyed() -> None:
    a = CallbackIssuer(key=b"k" * 32, base_url=None)
    b = CallbackIssuer(key=b"k" * 32, base_url="http://h:1/")
    other = CallbackIssuer(key=b"x" * 32, base_url=None)
    assert a.token("r_1", 4) == b.token("r_1", 4)
    assert a.token("r_1", 4) != a.token("r_1", 5) != a.token("r_2", 4)
    assert a.token("r_1", 4) != other.token("r_1", 4)
    assert a.verify("r_1", a.token("r_1", 4)) == 4
    assert a.callback("r_1", 4) is None
    assert b.url("r_1.3") == "http://h:1/api/v1/runs/r_1.3/callback"
    with pytest.raises(ValueError):
        CallbackIssuer(key=b"short", base_url=None)
