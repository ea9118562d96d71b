"""Schedules inside the assembled agent: they fire while the control plane is away.

The reference control plane runs in this process on 127.0.0.1; the agent's
wall clock is real time plus an offset the test pushes forward, so a fire
time comes without waiting for it.  The run it starts is reported once the
control plane is back.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agent.daemon import Agent
from agent.identity import load_private_key
from agent.link.pairing import adopt_identity, pair
from agent.runtime.triggers import fire_run_id
from agent.settings import Settings
from agent.store.sqlite import SqliteStore
from tests.link.linkhelpers import Cp, until, within

from .conftest import scheduled


class Shifted:
    """Real time, plus however far the test has pushed it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_a_schedule_fires_while_the_control_plane_is_down_and_is_reported_later(
    tmp_path: Path,
) -> None:
    cp = await Cp(tmp_path / "cp").start()
    await cp.tenant("acme")
    state = tmp_path / "agent"
    store = SqliteStore.open(state, synchronous="normal")
    clock = Shifted()
    task: asyncio.Task[None] | None = None
    agent: Agent | None = None
    try:
        identity = (await pair(await cp.token(), state_dir=state, store=store)).identity
        adopt_identity(store, identity)
        settings = Settings(state_dir=state, timer_interval=0.05, drain_timeout=5.0)
        agent = Agent(
            settings,
            store=store,
            identity=identity,
            key=load_private_key(state),
            clock=clock,
        )
        task = asyncio.get_running_loop().create_task(agent.serve())
        await within(agent.link.ready.wait(), "the agent to connect")
        await cp.publish(scheduled("report", {"schedule": "*/5 * * * *"}))
        a = agent
        await until(lambda: bool(a.sync.inventory()), "the flow to sync")
        await until(lambda: _marks(store) == 1, "the schedule to be seen")

        await cp.stop()
        await until(lambda: not a.link.ready.is_set(), "the link to notice")
        now = clock()
        fire_time = (int(now) // 300 + 1) * 300
        clock.offset += fire_time - now + 1  # one second past the next fire time
        run_id = fire_run_id("report", fire_time)
        await until(lambda: _status(store, run_id) == "completed", "the scheduled run")
        assert not agent.link.ready.is_set()  # it ran offline
        body, _ = agent.metrics.render()
        assert b'flow_agent_schedule_fires_total{flow="report"} 1.0' in body

        await cp.start()
        await within(agent.link.ready.wait(), "the agent to reconnect", timeout=30)
        reported: list[dict[str, Any]] = []

        def seen() -> bool:
            reported[:] = [e for e in cp.events(identity.agent_id) if e["run_id"] == run_id]
            return any(e["kind"] == "run.completed" for e in reported)

        await until(seen, "the run reported to the control plane", timeout=30)
        assert [e["kind"] for e in reported].count("run.started") == 1
    finally:
        if agent is not None and task is not None:
            agent.request_stop()
            await within(task, "the agent to stop")
        store.close()
        await cp.stop()


async def test_a_schedule_starts_no_run_while_the_outbox_is_full(tmp_path: Path) -> None:
    """Backpressure as for the API's and the control plane's starts: a fire while
    ``outbox_limit`` events wait is recorded as skipped and starts no run."""
    cp = await Cp(tmp_path / "cp").start()
    await cp.tenant("acme")
    state = tmp_path / "agent"
    store = SqliteStore.open(state, synchronous="normal")
    clock = Shifted()
    task: asyncio.Task[None] | None = None
    agent: Agent | None = None
    try:
        identity = (await pair(await cp.token(), state_dir=state, store=store)).identity
        adopt_identity(store, identity)
        settings = Settings(state_dir=state, timer_interval=0.05, drain_timeout=5.0, outbox_limit=2)
        agent = Agent(
            settings, store=store, identity=identity, key=load_private_key(state), clock=clock
        )
        task = asyncio.get_running_loop().create_task(agent.serve())
        await within(agent.link.ready.wait(), "the agent to connect")
        await cp.publish(scheduled("report", {"schedule": "*/5 * * * *"}))
        a = agent
        await until(lambda: bool(a.sync.inventory()), "the flow to sync")
        await until(lambda: _marks(store) == 1, "the schedule to be seen")
        await cp.stop()
        await until(lambda: not a.link.ready.is_set(), "the link to notice")

        fires = []
        for _ in range(2):
            now = clock()
            fire_time = (int(now) // 300 + 1) * 300
            clock.offset += fire_time - now + 1  # one second past the next fire time
            fires.append(fire_time)
            await until(lambda t=fire_time: _fire_error(store, t) != "", "the fire recorded")
            if len(fires) == 1:  # the first run's events fill the outbox
                run_id = fire_run_id("report", fire_time)
                await until(lambda r=run_id: _status(store, r) == "completed", "the first run")
                assert agent.outbox.full()
        second = fire_run_id("report", fires[1])
        assert _fire_error(store, fires[0]) is None
        assert _fire_error(store, fires[1]) == "skipped: outbox_full"
        assert store.get_run(second) is None
        body, _ = agent.metrics.render()
        assert b'flow_agent_schedule_fires_total{flow="report"} 2.0' in body
    finally:
        if agent is not None and task is not None:
            agent.request_stop()
            await within(task, "the agent to stop")
        store.close()
        await cp.stop()


def _fire_error(store: SqliteStore, fire_time: int) -> str | None:
    """A fire's error (None when it started its run), or "" when it is not recorded."""
    row = store._conn.execute(
        "SELECT error FROM schedule_fires WHERE fire_time = ?", (fire_time,)
    ).fetchone()
    return "" if row is None else row[0]


def _marks(store: SqliteStore) -> int:
    return int(store._conn.execute("SELECT count(*) FROM schedule_marks").fetchone()[0])


def _status(store: SqliteStore, run_id: str) -> str | None:
    record = store.get_run(run_id)
    return None if record is None else record.status
