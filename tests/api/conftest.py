"""A real runner over a real SQLite store, with the API served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.api import Metrics, create_app
from agent.connectors.registry import ConnectorRegistry, default_registry
from agent.flow.model import canonical_json, parse_flow
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.base import FlowRecord
from agent.store.sqlite import SqliteStore

from .flows import ALL

SECRETS = {"hook-secret": "s3cr3t-for-tests"}
TOKEN = "t" * 43


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def publish(store: SqliteStore, *docs: dict[str, Any]) -> None:
    """Store flows as the link does when the control plane publishes them."""
    for doc in docs:
        parsed = parse_flow(doc)
        store.put_flow(
            FlowRecord(
                flow_id=parsed.id,
                version=parsed.version,
                definition=canonical_json(doc),
                sha256=parsed.sha256,
                active=True,
                signature=None,
                received_at=0.0,
            )
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(tmp_path / "state", synchronous="off")
    publish(s, *ALL)
    yield s
    s.close()


@pytest.fixture
async def registry() -> AsyncIterator[ConnectorRegistry]:
    reg = default_registry()
    yield reg
    await reg.close_all()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def runner(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock, metrics: Metrics
) -> Runner:
    return Runner(
        store=store,
        catalog=Catalog(store, clock=clock),
        connectors=registry,
        secrets=SECRETS,
        observer=metrics,
        clock=clock,
        sleep=clock.sleep,
    )


async def serve(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    return client


@pytest.fixture
async def client(
    runner: Runner, metrics: Metrics
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The API without a token (as on loopback by default)."""
    c = await serve(create_app(runner=runner, metrics=metrics))
    yield c
    await c.close()


@pytest.fixture
async def guarded(
    runner: Runner, metrics: Metrics
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The API with a bearer token."""
    c = await serve(create_app(runner=runner, metrics=metrics, token=TOKEN))
    yield c
    await c.close()
