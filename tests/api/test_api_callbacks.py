"""``POST /api/v1/runs/{run_id}/callback``: a connector service answers late.

The example connector service runs on 127.0.0.1 and keeps its callbacks
(``callback_delay=None``); the test sends them through the API, as the
service would, and checks every refusal leaves the run as it was.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.api import Metrics, create_app
from agent.connectors.registry import default_registry
from agent.flow.model import parse_flow
from agent.runtime.callbacks import CallbackIssuer
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore
from tests.connectors.servicehelpers import EXAMPLES, example_service

from .conftest import TOKEN, publish, serve
from .flows import FORM

SERVICE_TOKEN = "svc-token-for-callbacks"
Client = TestClient[web.Request, web.Application]


@dataclass
class Setup:
    client: Client
    runner: Runner
    issuer: CallbackIssuer
    pending: list[tuple[dict[str, str], dict[str, Any]]]
    accepting: list[bool | str]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    module = example_service()
    service_app = module.make_app(token=SERVICE_TOKEN, callback_delay=None)
    service = TestServer(service_app, host="127.0.0.1", port=0)
    await service.start_server()
    doc: dict[str, Any] = json.loads((EXAMPLES / "connector-service" / "flow.json").read_text())
    doc["connectors"]["approvals"]["url"] = str(service.make_url("")).rstrip("/")
    store = SqliteStore.open(tmp_path / "state", synchronous="off")
    publish(store, doc, FORM)
    issuer = CallbackIssuer.for_state_dir(tmp_path / "state", base_url=None)
    registry = default_registry(callbacks=issuer, plugins=False)
    runner = Runner(
        store=store,
        catalog=Catalog(store),
        connectors=registry,
        secrets={"approvals-token": SERVICE_TOKEN},
        observer=Metrics(),
    )
    accepting: list[bool | str] = [True]
    app = create_app(runner=runner, token=TOKEN, callbacks=issuer, accepting=lambda: accepting[0])
    client = await serve(app)
    issuer.base_url = str(client.make_url("")).rstrip(
        "/"
    )  # known once it listens, as in the daemon
    try:
        yield Setup(client, runner, issuer, service_app[module.PENDING], accepting)
    finally:
        await client.close()
        await registry.close_all()
        await service.close()
        store.close()


API = {"Authorization": f"Bearer {TOKEN}"}


async def _waiting(s: Setup) -> tuple[str, dict[str, str]]:
    response = await s.client.post(
        "/api/v1/flows/service-approval/runs", json={"inputs": {"amount": 500}}, headers=API
    )
    result = await response.json()
    assert response.status == 201 and result["status"] == "waiting", result
    assert result["waiting"]["kind"] == "callback"
    callback, _ = s.pending[-1]
    assert callback["url"] == str(s.client.make_url(f"/api/v1/runs/{result['run_id']}/callback"))
    return result["run_id"], callback


async def _call_back(s: Setup, run_id: str, token: str | None, body: Any) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = await s.client.post(f"/api/v1/runs/{run_id}/callback", json=body, headers=headers)
    return response.status, await response.json()


async def test_a_callback_completes_the_run_once_without_the_api_token(setup: Setup) -> None:
    run_id, callback = await _waiting(setup)
    outputs = {"approved": True, "ticket": "T-9"}
    status, result = await _call_back(setup, run_id, callback["token"], {"outputs": outputs})
    assert status == 200, result
    assert result["status"] == "completed" and result["outputs"]["ticket"] == "T-9"
    status, problem = await _call_back(setup, run_id, callback["token"], {"outputs": outputs})
    assert status == 409 and problem["type"].endswith(":callback_used")


async def test_an_error_takes_the_fault_path(setup: Setup) -> None:
    run_id, callback = await _waiting(setup)
    status, result = await _call_back(
        setup, run_id, callback["token"], {"error": "the desk is closed"}
    )
    assert status == 200 and result["status"] == "failed"
    assert "the desk is closed" in result["error"]["message"]


async def test_refused_callbacks_leave_the_run_waiting(setup: Setup) -> None:
    run_id, callback = await _waiting(setup)
    token = callback["token"]
    cases: list[tuple[str, str | None, Any, int, str]] = [
        (run_id, None, {"outputs": {}}, 401, "invalid_callback_token"),
        (run_id, TOKEN, {"outputs": {}}, 401, "invalid_callback_token"),  # the API's token
        (run_id, token[:-2] + "xx", {"outputs": {}}, 401, "invalid_callback_token"),
        (run_id, token, {"outputs": [1]}, 422, "invalid_body"),
        (run_id, token, {"outputs": {}, "error": "both"}, 422, "invalid_body"),
        (run_id, token, {"error": ""}, 422, "invalid_body"),
        (run_id, token, {"result": {}}, 422, "invalid_body"),
        # Another run's token (its MAC binds the run id) is no key to this one.
        ("r_other", token, {"outputs": {}}, 401, "invalid_callback_token"),
        # A token minted for a run that does not exist here.
        ("r_gone", setup.issuer.token("r_gone", 3), {"outputs": {}}, 404, "run_not_found"),
    ]
    for target, given, body, want, code in cases:
        status, problem = await _call_back(setup, target, given, body)
        assert (status, problem["type"]) == (want, f"urn:flow-agent:problem:{code}"), body
    assert (await setup.runner.result_of(run_id))["status"] == "waiting"


async def test_a_run_that_waits_on_something_else_is_not_waiting(setup: Setup) -> None:
    response = await setup.client.post(
        "/api/v1/flows/form/runs", json={"inputs": {"due": "2030-01-01T00:00:00Z"}}, headers=API
    )
    page = await response.json()
    assert page["status"] == "waiting" and page["waiting"]["kind"] == "input"
    token = setup.issuer.token(page["run_id"], 1)
    status, problem = await _call_back(setup, page["run_id"], token, {"outputs": {}})
    assert status == 409 and problem["type"].endswith(":not_waiting")


async def test_while_stopping_new_runs_are_refused_but_callbacks_are_taken(setup: Setup) -> None:
    run_id, callback = await _waiting(setup)
    setup.accepting[0] = False
    response = await setup.client.post(
        "/api/v1/flows/service-approval/runs", json={"inputs": {}}, headers=API
    )
    problem = await response.json()
    assert response.status == 503 and problem["type"].endswith(":draining")
    assert response.headers["Retry-After"].isdigit()
    status, result = await _call_back(
        setup, run_id, callback["token"], {"outputs": {"approved": False, "ticket": "T-1"}}
    )
    assert status == 200 and result["status"] == "completed"
    setup.accepting[0] = "outbox_full"
    response = await setup.client.post(
        "/api/v1/flows/service-approval/runs", json={"inputs": {}}, headers=API
    )
    assert response.status == 503
    assert (await response.json())["type"].endswith(":outbox_full")


async def test_without_an_issuer_the_route_answers_404(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "state", synchronous="off")
    try:
        runner = Runner(
            store=store, catalog=Catalog(store, local=[parse_flow(FORM)]), connectors={}
        )
        client = await serve(create_app(runner=runner))
        try:
            response = await client.post("/api/v1/runs/r_x/callback", json={"outputs": {}})
            assert response.status == 404
        finally:
            await client.close()
    finally:
        store.close()
