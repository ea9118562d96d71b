"""The connector registry and the built-in set."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from agent.connectors.base import ConnectorRequest, ConnectorResult
from agent.connectors.http import HttpConnector
from agent.connectors.registry import ConnectorRegistry, UnknownConnectorType, default_registry
from agent.errors import ConfigError

from .conftest import Serve
from .helpers import request


class Recorder:
    """A connector that records its lifecycle (close may be told to fail)."""

    def __init__(self, *, fail_close: bool = False) -> None:
        self.closed = 0
        self.fail_close = fail_close

    async def call(self, request: ConnectorRequest) -> ConnectorResult:
        return ConnectorResult(ok=True, body={"connector": request.connector})

    async def close(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise RuntimeError("socket already gone")


async def test_the_default_registry_serves_http() -> None:
    registry = default_registry()
    try:
        assert registry.types() == ["http", "service", "sql"]
        assert "http" in registry
        assert isinstance(registry.get("http"), HttpConnector)
    finally:
        await registry.close_all()


def test_an_unknown_type_is_named_with_the_known_ones() -> None:
    registry = ConnectorRegistry()
    registry.register("http", Recorder())

    with pytest.raises(UnknownConnectorType) as caught:
        registry.get("sql")

    assert str(caught.value) == "no connector for type 'sql' (known types: http)"
    assert isinstance(caught.value, ConfigError)


def test_a_type_cannot_be_registered_twice() -> None:
    registry = ConnectorRegistry()
    registry.register("http", Recorder())

    with pytest.raises(ConfigError, match="registered twice"):
        registry.register("http", Recorder())


async def test_close_all_closes_each_connector_once_even_when_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared, failing, last = Recorder(), Recorder(fail_close=True), Recorder()
    registry = ConnectorRegistry()
    registry.register("a", shared)
    registry.register("b", shared)
    registry.register("c", failing)
    registry.register("d", last)
    caplog.set_level(logging.WARNING)

    await registry.close_all()

    assert (shared.closed, failing.closed, last.closed) == (1, 1, 1)
    assert "closing the c connector failed: RuntimeError" in caplog.text


def test_a_bad_network_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="http_deny_networks"):
        default_registry(http_deny_networks=["not-a-network"])


async def test_network_settings_reach_the_http_connector(serve: Serve) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response({"big": "x" * 100})

    app = web.Application()
    app.router.add_get("/x", handler)
    base = await serve(app)
    denied = default_registry(http_deny_networks=["127.0.0.0/8"])
    small = default_registry(http_max_response_bytes=64)
    try:
        refused = await denied.get("http").call(request(base, "GET /x"))
        too_big = await small.get("http").call(request(base, "GET /x"))
    finally:
        await denied.close_all()
        await small.close_all()

    assert not refused.ok
    assert "127.0.0.0/8 (http_deny_networks setting)" in refused.message
    assert too_big.message.endswith("response exceeds the 64 bytes limit")
