"""A real store, catalog and runner, and a scheduler over them on a hand-moved clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.connectors.registry import ConnectorRegistry, default_registry
from agent.flow.model import canonical_json, parse_flow
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.runtime.triggers import Scheduler
from agent.store.base import FlowRecord
from agent.store.sqlite import SqliteStore


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Unix seconds of a UTC wall time."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


class Clock:
    """Wall time the test moves by hand."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def scheduled(flow_id: str, *triggers: dict[str, Any], version: int = 1) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": flow_id,
        "version": version,
        "values": {"who": {"type": "string", "access": "input", "default": "the schedule"}},
        "triggers": list(triggers),
        "start": "done",
        "elements": {"done": {"type": "end"}},
    }


def publish(store: SqliteStore, doc: dict[str, Any]) -> None:
    """Store and activate a flow version, as flow sync does."""
    flow = parse_flow(doc)
    store.put_flow(
        FlowRecord(
            flow_id=flow.id,
            version=flow.version,
            definition=canonical_json(doc),
            sha256=flow.sha256,
            active=True,
            signature=None,
            received_at=0.0,
        )
    )


class Starts:
    """The ``spawn`` of a scheduler: keeps the run starts for the test to drive."""

    def __init__(self) -> None:
        self.pending: list[Coroutine[Any, Any, None]] = []
        self.run_ids: list[str] = []

    def __call__(self, run_id: str, work: Coroutine[Any, Any, None]) -> None:
        self.run_ids.append(run_id)
        self.pending.append(work)

    async def drive(self) -> None:
        work, self.pending = self.pending, []
        await asyncio.gather(*work)

    def drop(self) -> None:
        """A crash before the starts ran."""
        for work in self.pending:
            work.close()
        self.pending = []


class World:
    """Everything a scheduler needs, over one state directory."""

    def __init__(self, state_dir: Path, registry: ConnectorRegistry, clock: Clock) -> None:
        self.state_dir = state_dir
        self.registry = registry
        self.clock = clock
        self.store = SqliteStore.open(state_dir, synchronous="off")
        self.fired: list[str] = []

    def runner(self) -> Runner:
        catalog = Catalog(self.store, clock=self.clock)
        return Runner(store=self.store, catalog=catalog, connectors=self.registry, clock=self.clock)

    def scheduler(self, *, catch_up: str = "once", **options: Any) -> tuple[Scheduler, Starts]:
        runner = self.runner()
        starts = Starts()
        scheduler = Scheduler(
            store=self.store,
            catalog=runner.catalog,
            runner=runner,
            spawn=starts,
            catch_up=catch_up,
            clock=self.clock,
            on_fire=self.fired.append,
            **options,
        )
        return scheduler, starts

    def runs(self) -> list[tuple[str, str, str]]:
        """(run id, flow id, status) of every run, oldest first."""
        return [
            (r.run_id, r.flow_id, r.status)
            for r in reversed(self.store.list_runs(top_level=False, limit=10_000))
        ]

    def fires(self) -> list[tuple[str, int, str, str | None]]:
        rows = self.store._conn.execute(
            "SELECT flow_id, fire_time, run_id, error FROM schedule_fires ORDER BY fire_time"
        ).fetchall()
        return [tuple(row) for row in rows]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(at(2026, 1, 5, 8, 0, 30))  # a Monday


@pytest.fixture
async def registry() -> AsyncIterator[ConnectorRegistry]:
    reg = default_registry(plugins=False)
    yield reg
    await reg.close_all()


@pytest.fixture
def world(tmp_path: Path, registry: ConnectorRegistry, clock: Clock) -> Iterator[World]:
    w = World(tmp_path / "state", registry, clock)
    yield w
    w.close()
