"""The run API against a real runner and store: every status code it answers."""

from __future__ import annotations

import io
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from agent.store.base import FlowRecord
from agent.store.sqlite import SqliteStore

Client = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"


async def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 problem of this status and code; return its body."""
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert body["type"] == f"urn:flow-agent:problem:{code}"
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in body["detail"]
    return body


async def start(client: Client, flow: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await client.post(f"/api/v1/flows/{flow}/runs", json={"inputs": inputs or {}})
    assert response.status == 201, await response.text()
    result: dict[str, Any] = await response.json()
    assert response.headers["Location"] == f"/api/v1/runs/{result['run_id']}"
    return result


async def test_flows_lists_active_flows_with_typed_inputs(client: Client) -> None:
    response = await client.get("/api/v1/flows")
    assert response.status == 200
    flows = {f["id"]: f for f in (await response.json())["flows"]}
    assert {"form", "timer", "double", "fails", "parent"} <= set(flows)
    form = flows["form"]
    assert form["name"] == "Invoice approval" and form["version"] == 1
    inputs = {i["name"]: i for i in form["inputs"]}
    assert inputs["amount"] == {
        "name": "amount",
        "type": "number",
        "access": "input_output",
        "default": 10,
    }
    assert inputs["due"]["type"] == "datetime" and inputs["due"]["default"] is None
    assert "note" not in inputs  # an output only
    assert flows["double"]["triggers"] == [{"kind": "webhook", "signed": True}]
    assert "hook-secret" not in str(flows)


async def test_start_answers_when_the_run_completes(client: Client) -> None:
    result = await start(client, "double", {"n": "21"})
    assert result["status"] == "completed"
    assert result["outputs"] == {"doubled": 42}
    again = await client.get(f"/api/v1/runs/{result['run_id']}")
    assert again.status == 200 and await again.json() == result


async def test_start_answers_when_the_run_waits_or_fails(client: Client) -> None:
    waiting = await start(client, "form", {"amount": 5})
    assert waiting["status"] == "waiting"
    assert waiting["waiting"]["kind"] == "input"
    assert waiting["waiting"]["title"] == "Approve 5 for ACME?"
    failed = await start(client, "fails")
    assert failed["status"] == "failed"
    assert failed["error"] == {"element": "stop", "message": "the books do not balance"}


async def test_start_without_a_body_uses_the_defaults(client: Client) -> None:
    response = await client.post("/api/v1/flows/form/runs")
    assert response.status == 201
    assert (await response.json())["waiting"]["title"] == "Approve 10 for ACME?"


async def test_start_refusals(client: Client, store: SqliteStore) -> None:
    await problem(await client.post("/api/v1/flows/nope/runs", json={}), 404, "flow_not_found")
    body = await problem(
        await client.post("/api/v1/flows/double/runs", json={"inputs": {"n": "x", "zz": 1}}),
        422,
        "invalid_inputs",
    )
    assert {e.get("input") for e in body["errors"]} == {"n", "zz"}
    await problem(
        await client.post("/api/v1/flows/double/runs", json={"inputs": [1]}), 422, "invalid_body"
    )
    # A literal null is not "no body": it is a body that is not an object.
    null = {"data": b"null", "headers": {"Content-Type": "application/json"}}
    await problem(await client.post("/api/v1/flows/double/runs", **null), 422, "invalid_body")
    body = await problem(
        await client.post("/api/v1/flows/double/runs", json={"input": {}}), 422, "invalid_body"
    )
    assert body["errors"] == [{"member": "input", "detail": "not allowed here"}]
    await problem(
        await client.post(
            "/api/v1/flows/double/runs",
            data=b'{"inputs": {"n": 1}',
            headers={"Content-Type": "application/json"},
        ),
        400,
        "malformed_json",
    )
    await problem(
        await client.post(
            "/api/v1/flows/double/runs",
            data=b'{"inputs": {"n": NaN}}',
            headers={"Content-Type": "application/json"},
        ),
        400,
        "malformed_json",
    )
    await problem(
        await client.post(
            "/api/v1/flows/double/runs",
            data=b"[" * 100 + b"]" * 100,
            headers={"Content-Type": "application/json"},
        ),
        400,
        "malformed_json",
    )
    await problem(
        await client.post(
            "/api/v1/flows/double/runs",
            data=b'{"inputs": {}}',
            headers={"Content-Type": "text/plain"},
        ),
        415,
        "unsupported_media_type",
    )
    big = b'{"inputs": {"n": "' + b"1" * (1024 * 1024) + b'"}}'
    await problem(
        await client.post(
            "/api/v1/flows/double/runs",
            data=io.BytesIO(big),
            headers={"Content-Type": "application/json"},
        ),
        413,
        "body_too_large",
    )
    assert store.list_runs() == []  # no refusal stored a run


async def test_unknown_route_and_method_are_problems(client: Client) -> None:
    await problem(await client.get("/api/v1/nothing"), 404, "not_found")
    response = await client.delete("/api/v1/flows")
    body = await problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]
    assert body["instance"] == "/api/v1/flows"


async def test_get_run_unknown_is_404(client: Client) -> None:
    await problem(await client.get("/api/v1/runs/r_nothing"), 404, "run_not_found")


async def test_list_runs_filters_by_status_and_flow(client: Client) -> None:
    done = await start(client, "double", {"n": 1})
    waiting = await start(client, "form")
    failed = await start(client, "fails")

    async def ids(query: str) -> list[str]:
        response = await client.get(f"/api/v1/runs{query}")
        assert response.status == 200
        return [r["run_id"] for r in (await response.json())["runs"]]

    assert set(await ids("")) == {done["run_id"], waiting["run_id"], failed["run_id"]}
    assert await ids("?status=waiting") == [waiting["run_id"]]
    assert await ids("?flow=fails") == [failed["run_id"]]
    assert await ids("?status=completed&flow=double") == [done["run_id"]]
    assert await ids("?status=completed&flow=form") == []
    assert len(await ids("?limit=1")) == 1
    body = await problem(
        await client.get("/api/v1/runs?status=bogus&limit=0"), 400, "invalid_query"
    )
    assert {e["parameter"] for e in body["errors"]} == {"status", "limit"}


async def test_resume_completes_the_run(client: Client) -> None:
    run = await start(client, "form")
    response = await client.post(
        f"/api/v1/runs/{run['run_id']}/resume",
        json={
            "outcome": "approve",
            "fields": {"note": "fine", "amount": "12.5", "urgent": True, "tags": ["a"]},
            "state_token": run["waiting"]["state_token"],
        },
    )
    assert response.status == 200, await response.text()
    result = await response.json()
    assert result["status"] == "completed"
    assert result["outputs"] == {"amount": 12.5, "note": "fine", "approved": True}
    assert result["path"] == ["ask", "mark", "done"]


async def test_resume_refusals_leave_the_run_unchanged(client: Client, store: SqliteStore) -> None:
    run = await start(client, "form")
    run_id, token = run["run_id"], run["waiting"]["state_token"]
    url = f"/api/v1/runs/{run_id}/resume"
    before = store.get_run(run_id)
    good = {"note": "x", "amount": 3}
    cases: list[tuple[dict[str, Any], int, str, str | None]] = [
        ({"outcome": "approve", "fields": good, "state_token": "stale"}, 409, "stale_token", None),
        ({"outcome": "maybe", "fields": good, "state_token": token}, 422, "unknown_outcome", None),
        ({"outcome": "approve", "fields": {"amount": 3}}, 422, "missing_field", "note"),
        (
            {"outcome": "approve", "fields": {**good, "amount": "lots"}},
            422,
            "invalid_field",
            "amount",
        ),
        ({"outcome": "approve", "fields": {**good, "who": "me"}}, 422, "unknown_field", "who"),
    ]
    for answer, status, code, field in cases:
        body = await problem(await client.post(url, json=answer), status, code)
        if field is not None:
            assert body["errors"][0]["field"] == field
            assert body["errors"][0]["code"] == code
    for answer in ({"fields": good}, {"outcome": 3}, {"outcome": "approve", "fields": []}):
        await problem(await client.post(url, json=answer), 422, "invalid_body")
    await problem(await client.post(url, json={"outcome": "approve", "x": 1}), 422, "invalid_body")
    await problem(
        await client.post(url, data=b"{", headers={"Content-Type": "application/json"}),
        400,
        "malformed_json",
    )
    assert store.get_run(run_id) == before
    await problem(
        await client.post("/api/v1/runs/r_unknown/resume", json={"outcome": "approve"}),
        404,
        "run_not_found",
    )


async def test_resume_of_a_run_that_moved_on_is_409(client: Client) -> None:
    run = await start(client, "form")
    url = f"/api/v1/runs/{run['run_id']}/resume"
    answer = {
        "outcome": "approve",
        "fields": {"note": "first", "amount": 1},
        "state_token": run["waiting"]["state_token"],
    }
    assert (await client.post(url, json=answer)).status == 200
    await problem(await client.post(url, json=answer), 409, "stale_token")
    # Without a token the refusal says the run is no longer waiting.
    del answer["state_token"]
    await problem(await client.post(url, json=answer), 409, "not_waiting")
    timer = await start(client, "timer")
    await problem(
        await client.post(f"/api/v1/runs/{timer['run_id']}/resume", json={"outcome": "x"}),
        409,
        "not_waiting",
    )


async def test_answering_a_parent_answers_its_waiting_child(client: Client) -> None:
    parent = await start(client, "parent")
    child = parent["waiting"]["child_run"]
    assert child["waiting"]["title"] == "Approve 99 for Parent Ltd?"
    response = await client.post(
        f"/api/v1/runs/{parent['run_id']}/resume",
        json={
            "outcome": "approve",
            "fields": {"note": "ok"},
            "state_token": child["waiting"]["state_token"],
        },
    )
    assert response.status == 200
    assert (await response.json())["status"] == "completed"
    assert (await (await client.get(f"/api/v1/runs/{parent['run_id']}")).json())["outputs"] == {
        "ok": True
    }


async def test_cancel(client: Client) -> None:
    run = await start(client, "timer")
    response = await client.post(f"/api/v1/runs/{run['run_id']}/cancel")
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    again = await client.post(f"/api/v1/runs/{run['run_id']}/cancel")
    assert again.status == 200 and (await again.json())["status"] == "cancelled"
    done = await start(client, "double", {"n": 1})
    await problem(await client.post(f"/api/v1/runs/{done['run_id']}/cancel"), 409, "already_ended")
    await problem(await client.post("/api/v1/runs/r_none/cancel"), 404, "run_not_found")


async def test_openapi_document_is_served(client: Client) -> None:
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    routes = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    served = {
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()
        if r.resource is not None
        and r.method != "HEAD"
        and not r.resource.canonical.startswith("/ui")
        and r.resource.canonical != "/"
    }
    assert served == routes


async def test_a_broken_stored_flow_is_a_problem_not_a_traceback(
    client: Client, store: SqliteStore
) -> None:
    store.put_flow(
        FlowRecord(
            flow_id="broken",
            version=1,
            definition='{"format": "flow/v1"}',
            sha256="0" * 64,
            active=True,
            signature=None,
            received_at=0.0,
        )
    )
    body = await problem(await client.post("/api/v1/flows/broken/runs", json={}), 500, "internal")
    assert "stored flow 'broken' version 1 is not valid" in body["detail"]
    listed = await (await client.get("/api/v1/flows")).json()
    ids = [f["id"] for f in listed["flows"]]
    assert "broken" not in ids and "form" in ids  # the others are still listed
