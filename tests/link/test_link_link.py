"""The link against the real control plane: delivery, restarts, half-open, revocation."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from agent.link.state import LinkState, read_link_status
from agent.link.status import format_status, read_status

from .linkhelpers import HELLO, AgentUnderTest, Cp, until, within
from .proxy import FreezingProxy


def _ended(cp: Cp, run_ids: list[str]) -> bool:
    return all(cp.cp.store.get_run("acme", r).status == "completed" for r in run_ids)


def _check_delivery(cp: Cp, agent: AgentUnderTest) -> list[dict[str, Any]]:
    """Every event the agent numbered is at the control plane once, in order."""
    assert agent.identity is not None
    events = cp.events(agent.identity.agent_id)
    seqs = [e["seq"] for e in events]
    last = agent.a.outbox.last_seq()
    assert seqs == list(range(1, last + 1)), "lost, duplicated or reordered events"
    return events


async def test_events_arrive_once_and_in_order_and_are_removed_when_acked(
    cp: Cp, agent: AgentUnderTest
) -> None:
    a = await agent.start()
    await cp.publish(HELLO)
    await until(lambda: a.sync.is_synced("hello"), "hello synced")
    ids = [(await cp.cp.dispatch_run("acme", flow="hello"))[0].id for _ in range(20)]
    await until(lambda: _ended(cp, ids), "every run reported completed")
    await until(lambda: a.outbox.depth() == 0, "all events acked")
    events = _check_delivery(cp, agent)
    completed = [e["run_id"] for e in events if e["kind"] == "run.completed"]
    assert sorted(completed) == sorted(ids)
    for run_id in ids:
        run = cp.cp.store.get_run("acme", run_id)
        assert run.status == "completed" and run.result is not None
        assert run.result["path"] == ["greet", "done"] and "outputs" not in run.result


async def test_a_control_plane_restart_mid_stream_loses_and_duplicates_nothing(
    cp: Cp, agent: AgentUnderTest
) -> None:
    a = await agent.start()
    await cp.publish(HELLO)
    await until(lambda: a.sync.is_synced("hello"), "hello synced")
    dispatched = []
    for round_ in range(3):
        for _ in range(15):
            dispatched.append((await cp.cp.dispatch_run("acme", flow="hello"))[0].id)
        # Stop while events are still flowing; runs keep running on the agent.
        await cp.stop()
        for run_id in dispatched[-15:]:
            await a.runner.result_of(run_id)
        await cp.start()
        await within(a.link.ready.wait(), f"reconnect {round_}")
    await until(lambda: _ended(cp, dispatched), "every run reported completed")
    await until(lambda: a.outbox.depth() == 0, "the outbox to drain")
    events = _check_delivery(cp, agent)
    completed = [e["run_id"] for e in events if e["kind"] == "run.completed"]
    assert sorted(completed) == sorted(dispatched)
    assert a.link.sessions == 4


async def test_status_is_reported_to_the_control_plane(cp: Cp, agent: AgentUnderTest) -> None:
    await agent.start()
    assert agent.identity is not None
    agent_id = agent.identity.agent_id

    def report() -> dict[str, Any] | None:
        found = cp.cp.store.get_agent(agent_id)
        return None if found is None else found.status_report

    await until(lambda: report() is not None, "a status report")
    got = report()
    assert got is not None
    assert got["agent_version"] and got["host"]["hostname"]
    assert got["outbox_depth"] >= 0 and "completed" in got["runs"]


async def test_revocation_disconnects_at_once_and_stops_for_good(
    cp: Cp, agent: AgentUnderTest
) -> None:
    a = await agent.start()
    assert agent.identity is not None
    await cp.cp.revoke("acme", agent.identity.agent_id)
    await until(lambda: read_link_status(a.store).state is LinkState.REVOKED, "revoked status")
    assert not a.link.ready.is_set()
    sessions = a.link.sessions
    status = read_status(agent.settings.state_dir)
    assert status.link.state is LinkState.REVOKED
    lines = "\n".join(format_status(status))
    assert "revoked" in lines and "re-pairing is needed" in lines
    # No reconnect storm: the link is finished, and so is the agent (exit 78).
    await within(a.stop_requested.wait(), "the revoked agent to stop itself")
    await cp.publish(HELLO)
    assert a.link.sessions == sessions
    await agent.stop()
    assert a.exit_code == 78
    assert read_link_status(agent.open_store()).state is LinkState.REVOKED


async def test_a_half_open_link_is_found_by_heartbeats_and_replaced(tmp_path: Path) -> None:
    heartbeat = 0.5
    backend = Cp(tmp_path / "cp")
    proxy = await FreezingProxy(backend.port).start()
    backend.settings = backend.settings.__class__(
        **{**backend.settings.__dict__, "public_url": f"http://127.0.0.1:{proxy.port}"}
    )
    await backend.start()
    under_test = AgentUnderTest(tmp_path / "agent", heartbeat=heartbeat)
    try:
        await backend.tenant("acme")
        await under_test.pair(await backend.token())
        a = await under_test.start()
        assert proxy.freeze() >= 1
        frozen_at = time.monotonic()
        # Nothing closes the socket: only a missing pong can tell.
        await until(
            lambda: not a.link.ready.is_set(),
            "the half-open link to be noticed",
            timeout=2 * heartbeat + 5,
        )
        noticed = time.monotonic() - frozen_at
        await within(a.link.ready.wait(), "a new session through the proxy")
        assert a.link.sessions == 2
        assert read_link_status(a.store).state is LinkState.CONNECTED
        assert noticed > heartbeat  # found by a missing pong, not by a closed socket
    finally:
        await under_test.stop()
        await proxy.stop()
        await backend.stop()


async def test_malformed_and_unknown_frames_are_answered_never_fatal(
    cp: Cp, agent: AgentUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    a = await agent.start()
    assert agent.identity is not None
    conn = cp.cp.hub.connection(agent.identity.agent_id)
    assert conn is not None
    caplog.set_level(logging.WARNING, logger="controlplane.link")
    for text in ("not json", '{"v":1,"type":"bogus"}', '{"v":2,"type":"ack","seq":1}'):
        await conn.ws.send_str(text)
    await conn.ws.send_bytes(b"\x00binary")
    await cp.publish(HELLO)  # the link still works
    await until(lambda: a.sync.is_synced("hello"), "hello synced after the bad frames")

    def answers() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "controlplane.link" and "refused a frame" in r.getMessage()
        ]

    await until(lambda: len(answers()) >= 4, "four error frames back at the control plane")
    for code in ("malformed", "unknown_type", "bad_version"):
        assert any(code in line for line in answers()), code
    assert a.link.sessions == 1
    # A peer that sends nothing but garbage is cut off (4400) and the link comes back.
    for _ in range(21):
        await conn.ws.send_str("{")
    await until(lambda: a.link.sessions == 2, "a new session after 4400")
