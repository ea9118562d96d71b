from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.connectors.registry import ConnectorRegistry, default_registry
from agent.flow.model import parse_flow
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore


class Clock:
    """A fake wall clock that a fake sleep advances."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(tmp_path / "state", synchronous="off")
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry() -> AsyncIterator[ConnectorRegistry]:
    reg = default_registry()
    yield reg
    await reg.close_all()


def make_runner(
    store: SqliteStore,
    registry: ConnectorRegistry,
    clock: Clock,
    *docs: dict[str, Any],
    inline_wait: float = 0.0,
    **kw: Any,
) -> Runner:
    catalog = Catalog(store, local=[parse_flow(d) for d in docs], clock=clock)
    return Runner(
        store=store,
        catalog=catalog,
        connectors=registry,
        clock=clock,
        sleep=clock.sleep,
        inline_wait=inline_wait,
        **kw,
    )
