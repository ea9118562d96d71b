"""Canary: a secret from the encrypted store never shows up where it must not.

One known value goes into the secret store and from there into connector
headers (http, service), a sql password, and a header template built to fail
with the value in Jinja's message.  Peers quote it back in their errors.
Then nothing may hold it in plain text: log records at DEBUG, run results,
what the observer would report to the control plane, local API responses,
fault and error messages, the SQLite file and its WAL.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.api.app import create_app
from agent.connectors.registry import default_registry
from agent.flow.model import parse_flow
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.secrets import SecretStore, SecretsView
from agent.store.sqlite import SqliteStore

CANARY = "canary-7f3a9c1e5d"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Recorder:
    """The observer a link would report from: keeps every committed result."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def committed(self, *, result: dict[str, Any], **_: Any) -> None:
        self.reports.append(result)


def _leaky_peer() -> web.Application:
    """Answers every request with an error that quotes the credentials it got."""

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        return web.json_response(
            {"message": f"credential {auth} refused", "echo": auth, "nested": [{auth: auth}]},
            # /echo answers 200: what it echoes becomes the run's values.
            status=200 if request.path == "/echo" else 500,
            headers={"X-Echo": auth},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def _flows(url: str) -> list[dict[str, Any]]:
    secret_value = {"tok": {"type": "secret", "secret": "canary"}}
    out = {
        "problem": {"type": "object", "access": "output"},
        "body": {"type": "object", "access": "output"},
    }
    fault_end = {
        "keep": {
            "type": "operator",
            "operations": [{"set": "problem", "to": {"ref": "fault"}}],
            "next": "failed",
        },
        "failed": {"type": "end", "status": "failed", "message": "{{ fault.message }}"},
    }
    return [
        {
            "format": "flow/v1",
            "id": "http-leak",
            "values": {**secret_value, **out},
            "connectors": {
                "erp": {
                    "type": "http",
                    "base_url": url,
                    "headers": {"Authorization": "Bearer {{ tok }}"},
                }
            },
            "start": "call",
            "elements": {
                "call": {
                    "type": "message",
                    "connector": "erp",
                    "action": "POST /pay",
                    "outputs": {"body": "body"},
                    "retry": {"attempts": 2, "backoff": 0},
                    "next": "keep",
                    "fault": "keep",
                },
                **fault_end,
            },
        },
        {
            "format": "flow/v1",
            "id": "http-echo",
            "values": {**secret_value, **out, "header": {"type": "string", "access": "output"}},
            "connectors": {
                "erp": {
                    "type": "http",
                    "base_url": url,
                    "headers": {"Authorization": "Bearer {{ tok }}"},
                }
            },
            "start": "call",
            "elements": {
                "call": {
                    "type": "message",
                    "connector": "erp",
                    "action": "GET /echo",
                    "outputs": {"body": "body", "header": "headers.x-echo"},
                    "next": "done",
                },
                "done": {"type": "end"},
            },
        },
        {
            "format": "flow/v1",
            "id": "service-leak",
            "values": {**secret_value, **out},
            "connectors": {
                "svc": {
                    "type": "service",
                    "url": url,
                    "headers": {"Authorization": "Bearer {{ tok }}"},
                }
            },
            "start": "call",
            "elements": {
                "call": {
                    "type": "message",
                    "connector": "svc",
                    "action": "approve",
                    "inputs": {"amount": 1},
                    "next": "keep",
                    "fault": "keep",
                },
                **fault_end,
            },
        },
        {
            "format": "flow/v1",
            "id": "sql-leak",
            "values": out,
            "connectors": {
                "db": {
                    "type": "sql",
                    "dsn": f"postgresql://app@127.0.0.1:{free_port()}/crm",
                    "password_secret": "canary",
                }
            },
            "start": "call",
            "elements": {
                "call": {
                    "type": "message",
                    "connector": "db",
                    "action": "query SELECT 1",
                    "next": "keep",
                    "fault": "keep",
                },
                **fault_end,
            },
        },
        {
            "format": "flow/v1",
            "id": "template-leak",
            "values": {**secret_value, **out},
            "connectors": {
                "erp": {
                    "type": "http",
                    "base_url": url,
                    # Jinja's ValueError quotes the operand: "'<value>' is not in list".
                    "headers": {"X-Probe": "{{ [1].index(tok) }}"},
                }
            },
            "start": "call",
            "elements": {
                "call": {"type": "message", "connector": "erp", "action": "GET /x", "next": "keep"},
                **fault_end,
            },
        },
    ]


async def test_the_canary_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    peer = TestServer(_leaky_peer(), host="127.0.0.1")
    await peer.start_server()
    url = str(peer.make_url("")).rstrip("/")
    state = tmp_path / "state"
    store = SqliteStore.open(state, synchronous="off")
    vault = SecretStore.for_store(store)
    vault.set("canary", CANARY)
    secrets = SecretsView(vault)
    registry = default_registry(secrets=secrets, state_dir=state, plugins=False)
    recorder = Recorder()
    flows = _flows(url)
    runner = Runner(
        store=store,
        catalog=Catalog(store, local=[parse_flow(doc) for doc in flows]),
        connectors=registry,
        secrets=secrets,
        observer=recorder,
    )
    seen: list[str] = []
    try:
        results = [await runner.start(doc["id"], {}) for doc in flows]
        api = TestClient(TestServer(create_app(runner=runner), host="127.0.0.1"))
        await api.start_server()
        try:
            listing = await api.get("/api/v1/runs")
            seen.append(await listing.text())
            for result in results:
                response = await api.get(f"/api/v1/runs/{result['run_id']}")
                seen.append(await response.text())
            started = await api.post("/api/v1/flows/http-leak/runs", json={"inputs": {}})
            seen.append(await started.text())
        finally:
            await api.close()
        db_bytes = store.path.read_bytes()
        wal = store.path.with_name(store.path.name + "-wal")
        wal_bytes = wal.read_bytes() if wal.exists() else b""
    finally:
        await registry.close_all()
        vault.close()
        store.close()
        await peer.close()

    # The runs really went through the paths where the value was at hand.
    by_flow = {r["flow"]: r for r in results}
    assert all(r["status"] == "failed" for r in results if r["flow"] != "http-echo"), results
    # A peer that echoes the credential in a 200: kept, but with the value taken out.
    echoed = by_flow["http-echo"]
    assert echoed["status"] == "completed", echoed
    assert echoed["outputs"]["header"] == "Bearer ***"
    assert echoed["outputs"]["body"]["echo"] == "Bearer ***"
    assert echoed["outputs"]["body"]["nested"] == [{"Bearer ***": "Bearer ***"}]
    assert by_flow["http-leak"]["outputs"]["problem"]["status"] == 500
    assert "credential Bearer *** refused" in by_flow["service-leak"]["error"]["message"]
    assert "cannot connect" in by_flow["sql-leak"]["error"]["message"]
    assert "is not in list" in by_flow["template-leak"]["error"]["message"]
    assert any("POST" in r.getMessage() for r in caplog.records)
    assert len(recorder.reports) > len(results)
    assert len(wal_bytes) + len(db_bytes) > 0

    # ... and the value is nowhere.
    assert CANARY not in json.dumps(results)
    assert CANARY not in json.dumps(recorder.reports)
    assert CANARY not in caplog.text
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        assert CANARY not in repr(record.args)
        assert record.exc_info is None or CANARY not in repr(record.exc_info[1])
    assert all(CANARY not in text for text in seen)
    assert CANARY.encode() not in db_bytes
    assert CANARY.encode() not in wal_bytes
