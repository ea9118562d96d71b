"""Case 18: the wall clock jumps a day forward, then back (time-machine).

The agent and the control plane run in this process, so time-machine moves
the wall clock under both (``time.time``, ``datetime.now``) while the
monotonic clock, which asyncio's timeouts and the heartbeat use, goes on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
import time_machine
import trustme

from agent.link.pairing import PairingFailed, PairingRefused
from tests.link.linkhelpers import HELLO, AgentUnderTest, Cp, until, wait_flow

from .conftest import Record

CRON: dict[str, Any] = {**HELLO, "id": "minutely", "triggers": [{"schedule": "* * * * *"}]}


def _runs(agent: AgentUnderTest, flow: str) -> list[tuple[str, str]]:
    rows = agent.a.store._conn.execute(
        "SELECT run_id, status FROM runs WHERE flow_id = ? ORDER BY run_id", (flow,)
    )
    return [(r[0], r[1]) for r in rows]


async def test_18_clock_jumps_a_day_forward_and_back(tmp_path: Path, record: Record) -> None:
    """Case 18. +1 day, then -1 day, with runs waiting on timers, a minutely schedule and
    completed runs, a 0.5 s heartbeat.

    Pass: no false disconnect (timeouts and heartbeats use the monotonic
    clock: one session throughout); no mass re-runs: each waiting timer
    fires once, completed runs stay completed, the schedule catches up one
    run for the whole missed day (catch_up=once) instead of 1,440, and
    jumping back fires nothing again; events still arrive once, in order.
    """
    with time_machine.travel(dt.datetime.now(dt.UTC), tick=True) as traveller:
        cp = await Cp(tmp_path / "cp", heartbeat=0.5).start()
        agent = AgentUnderTest(tmp_path / "agent", heartbeat=0.5)
        try:
            await cp.tenant("acme")
            await agent.pair(await cp.token())
            a = await agent.start()
            for doc in (HELLO, wait_flow(600), CRON):
                await cp.publish(doc)
            await until(
                lambda: all(a.sync.is_synced(f) for f in ("hello", "sleepy", "minutely")),
                "flows synced",
            )
            done = [(await cp.cp.dispatch_run("acme", flow="hello"))[0].id for _ in range(5)]
            sleepy = [(await cp.cp.dispatch_run("acme", flow="sleepy"))[0].id for _ in range(3)]
            await until(lambda: len(_runs(agent, "sleepy")) == 3, "timers armed")
            cron_before = len(_runs(agent, "minutely"))

            traveller.shift(dt.timedelta(days=1))
            await until(
                lambda: {s for _, s in _runs(agent, "sleepy")} == {"completed"},
                "the timers to fire after the jump",
            )
            await asyncio.sleep(2.0)  # four heartbeats, several timer scans
            cron_after = len(_runs(agent, "minutely"))
            assert a.link.sessions == 1, "a wall-clock jump cost the link"
            assert cron_after - cron_before <= 2, f"{cron_after - cron_before} schedule runs"
            assert {s for _, s in _runs(agent, "hello")} == {"completed"}
            assert len(_runs(agent, "hello")) == 5

            traveller.shift(dt.timedelta(days=-1))
            total = len(a.store.list_runs(limit=10_000))
            await asyncio.sleep(2.0)
            assert len(a.store.list_runs(limit=10_000)) == total, "jumping back re-ran something"
            assert a.link.sessions == 1
            await until(lambda: a.outbox.depth() == 0, "events delivered")
            assert agent.identity is not None
            seqs = [e["seq"] for e in cp.events(agent.identity.agent_id)]
            assert seqs == list(range(1, a.outbox.last_seq() + 1))
            started = [e for e in cp.events(agent.identity.agent_id) if e["kind"] == "run.started"]
            assert len(started) == len({e["run_id"] for e in started})
        finally:
            await agent.stop()
            await cp.stop()
    missed_day = cron_after - cron_before
    record(
        18,
        jump_days=[1, -1],
        sessions=1,
        timers_fired_once=len(sleepy),
        completed_not_rerun=len(done),
        schedule_runs_for_missed_day=missed_day,
    )


async def test_18_an_expired_pairing_token_after_a_jump(tmp_path: Path) -> None:
    """Case 18, tokens: a token of one hour is used after the clock jumped a day.

    Pass: refused with a clear "expired" error, nothing stored.
    """
    with time_machine.travel(dt.datetime.now(dt.UTC), tick=True) as traveller:
        cp = await Cp(tmp_path / "cp").start()
        agent = AgentUnderTest(tmp_path / "agent")
        try:
            await cp.tenant("acme")
            token = await cp.token(ttl=3600)
            traveller.shift(dt.timedelta(days=1))
            with pytest.raises(PairingRefused) as refused:
                await agent.pair(token)
            assert refused.value.code == "token_expired"
            assert "expired" in refused.value.message
            assert not (tmp_path / "agent" / "identity.json").exists()
        finally:
            if agent.store is not None:
                agent.store.close()
            await cp.stop()


@pytest.mark.parametrize(
    ("window", "says"),
    [((-2, -1), "certificate has expired"), ((1, 2), "certificate is not yet valid")],
    ids=["expired", "not-yet-valid"],
)
async def test_18_certificates_outside_their_validity(
    tmp_path: Path, window: tuple[int, int], says: str
) -> None:
    """Case 18, certificates: the control plane's certificate expired a day ago, or is
    valid only from tomorrow (this host's clock a day behind).

    Pass: pairing is refused with an error that says which, no fallback.
    """
    ca = trustme.CA()
    now = dt.datetime.now(dt.UTC)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(
        "127.0.0.1",
        not_before=now + dt.timedelta(days=window[0]),
        not_after=now + dt.timedelta(days=window[1]),
    ).configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cp = await Cp(tmp_path / "cp", tls=context).start()
    agent = AgentUnderTest(tmp_path / "agent", ca_file=ca_file)
    try:
        await cp.tenant("acme")
        with pytest.raises(PairingFailed) as failed:
            await agent.pair(await cp.token())
        assert says in failed.value.message
        assert not (tmp_path / "agent" / "identity.json").exists()
    finally:
        if agent.store is not None:
            agent.store.close()
        await cp.stop()
