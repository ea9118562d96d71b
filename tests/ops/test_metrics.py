"""The daemon's metrics land in the API's registry and count what really happened.

A real runner over a real store calls a real HTTP server on loopback; the
registry is scraped the way Prometheus would (``generate_latest``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.api.metrics import Metrics
from agent.connectors.registry import default_registry
from agent.flow.model import canonical_json, parse_flow
from agent.link.dispatch import TimedCatalog
from agent.metrics import AgentMetrics
from agent.runtime.runner import Runner
from agent.store.base import FlowRecord
from agent.store.sqlite import SqliteStore


def _flow(port: int) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "charge",
        "values": {"path": {"type": "string", "access": "input", "default": "ok"}},
        "connectors": {"erp": {"type": "http", "base_url": f"http://127.0.0.1:{port}"}},
        "start": "prepare",
        "elements": {
            "prepare": {
                "type": "operator",
                "operations": [{"set": "path", "to": "{{ path }}"}],
                "next": "call",
            },
            "call": {
                "type": "message",
                "connector": "erp",
                "action": "POST /{{ path }}",
                "timeout": 5,
                "next": "done",
                "fault": "failed",
            },
            "failed": {"type": "end", "status": "failed", "message": "the call failed"},
            "done": {"type": "end"},
        },
    }


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"id": 1})

    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": "no"}, status=422)

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/fail", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_runs_elements_and_connector_calls_are_counted(tmp_path: Path, server: int) -> None:
    store = SqliteStore.open(tmp_path / "state", synchronous="off")
    registry = default_registry(plugins=False)
    try:
        doc = _flow(server)
        parsed = parse_flow(doc)
        store.put_flow(
            FlowRecord(
                flow_id="charge",
                version=parsed.version,
                definition=canonical_json(doc),
                sha256=parsed.sha256,
                active=True,
                signature=None,
                received_at=0.0,
            )
        )
        api = Metrics()
        ops = AgentMetrics(registry=api.registry)
        runner = Runner(
            store=store,
            catalog=TimedCatalog(store),
            connectors=ops.connectors(registry),
            observer=api,
        )
        assert (await runner.start("charge", {"path": "ok"}))["status"] == "completed"
        assert (await runner.start("charge", {"path": "fail"}))["status"] == "failed"
        ops.schedule_fired("charge")
    finally:
        await registry.close_all()
        store.close()
    got = scrape(api)
    assert got[("flow_agent_runs_started_total", (("flow", "charge"),))] == 2
    assert got[("flow_agent_runs_completed_total", (("flow", "charge"),))] == 1
    assert got[("flow_agent_runs_failed_total", (("flow", "charge"),))] == 1
    assert got[("flow_agent_connector_calls_total", (("connector", "http"),))] == 2
    assert got[("flow_agent_connector_errors_total", (("connector", "http"),))] == 1
    assert got[("flow_agent_connector_call_duration_seconds_count", (("connector", "http"),))] == 2
    for element_type in ("operator", "message"):
        key = ("flow_agent_element_duration_seconds_count", (("type", element_type),))
        assert got[key] == 2, element_type
    assert got[("flow_agent_schedule_fires_total", (("flow", "charge"),))] == 1


def test_state_gauges_show_one_state_at_a_time() -> None:
    api = Metrics()
    ops = AgentMetrics(registry=api.registry)
    ops.set_link_state("connected")
    ops.set_lifecycle("draining")
    got = scrape(api)
    link = {dict(k[1])["state"]: v for k, v in got.items() if k[0] == "flow_agent_link_state"}
    assert link == {
        "never_connected": 0,
        "connected": 1,
        "disconnected": 0,
        "revoked": 0,
        "auth_refused": 0,
    }
    life = {dict(k[1])["state"]: v for k, v in got.items() if k[0] == "flow_agent_lifecycle_state"}
    assert life == {"starting": 0, "ready": 0, "draining": 1}
    assert any(k[0] == "flow_agent_build_info" for k in got)


def test_every_name_has_the_prefix() -> None:
    api = Metrics()
    AgentMetrics(registry=api.registry)
    names = [family.name for family in api.registry.collect()]
    assert len(names) >= 20
    assert all(name.startswith("flow_agent_") for name in names), names
