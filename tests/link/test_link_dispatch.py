"""Runs dispatched by the real control plane: idempotency, refusals, cancel, drain."""

from __future__ import annotations

from typing import Any

from agent.protocol.frames import StartRun

from .linkhelpers import HELLO, PAGE, AgentUnderTest, Cp, until, wait_flow


def _run(cp: Cp, run_id: str) -> Any:
    return cp.cp.store.get_run("acme", run_id)


async def _started(cp: Cp, agent: AgentUnderTest, *flows: dict[str, Any]) -> None:
    a = await agent.start()
    for doc in flows:
        await cp.publish(doc)
    await until(lambda: all(a.sync.is_synced(d["id"]) for d in flows), "flows synced")


async def test_a_repeated_start_run_never_starts_a_second_run(
    cp: Cp, agent: AgentUnderTest
) -> None:
    await _started(cp, agent, PAGE)
    a = agent.a
    await cp.cp.dispatch_run("acme", flow="approve", run_id="order-42")
    await until(lambda: _run(cp, "order-42").status == "waiting", "the run to wait")
    assert agent.identity is not None
    conn = cp.cp.hub.connection(agent.identity.agent_id)
    assert conn is not None
    for _ in range(3):  # a control plane that lost our ack sends it again
        assert await conn.send(StartRun(run_id="order-42", flow="approve", inputs={}))
    await until(lambda: _run(cp, "order-42").acked, "acks")
    await until(lambda: a.outbox.depth() == 0, "every event delivered")
    reported = [
        e
        for e in cp.events(agent.identity.agent_id)
        if e["kind"] == "run.started" and e["run_id"] == "order-42"
    ]
    assert len(a.store.list_runs(flow_id="approve")) == 1
    assert len(reported) == 1
    assert _run(cp, "order-42").status == "waiting"


async def test_refusals_say_why(cp: Cp, agent: AgentUnderTest) -> None:
    await _started(cp, agent, HELLO)
    assert agent.identity is not None
    conn = cp.cp.hub.connection(agent.identity.agent_id)
    assert conn is not None
    cases = {
        "r-unknown": StartRun(run_id="r-unknown", flow="nope", inputs={}),
        "r-version": StartRun(run_id="r-version", flow="hello", inputs={}, version=7),
        "r-inputs": StartRun(run_id="r-inputs", flow="hello", inputs={"greeting": "x"}),
    }
    for run_id, frame in cases.items():
        cp.cp.db.conn.execute(
            "INSERT INTO runs(id, tenant, flow, agent_id, inputs, status, origin, created_at,"
            " updated_at) VALUES (?, 'acme', ?, ?, '{}', 'dispatched', 'controlplane', 0, 0)",
            (run_id, frame.flow, agent.identity.agent_id),
        )
        assert await conn.send(frame)
    await until(lambda: all(_run(cp, r).acked for r in cases), "every refusal")
    reasons = {r: (_run(cp, r).status, _run(cp, r).reason) for r in cases}
    assert reasons == {
        "r-unknown": ("refused", "flow_unknown"),
        "r-version": ("refused", "flow_unknown"),
        "r-inputs": ("refused", "inputs_invalid"),
    }
    assert agent.a.store.list_runs() == []


async def test_a_full_outbox_refuses_new_runs_but_drops_nothing(
    cp: Cp, agent: AgentUnderTest
) -> None:
    agent.configure(outbox_limit=3)
    await _started(cp, agent, HELLO)
    a = agent.a
    await cp.stop()  # nothing is acked while the control plane is away
    await until(lambda: not a.link.ready.is_set(), "the link to go down")
    from agent.link.outbox import NewEvent

    a.outbox.append([NewEvent("element.entered", None, "2026-01-01T00:00:00+00:00", {})] * 3)
    depth = a.outbox.depth()
    ack = await a.dispatcher.start_run(StartRun(run_id="r-full", flow="hello", inputs={}))
    assert (ack.accepted, ack.reason) == (False, "outbox_full")
    assert a.store.get_run("r-full") is None
    assert a.outbox.depth() == depth
    await cp.start()
    await until(lambda: a.outbox.depth() == 0, "the outbox to drain after reconnect")
    ack = await a.dispatcher.start_run(StartRun(run_id="r-later", flow="hello", inputs={}))
    assert ack.accepted


async def test_cancel_run_cancels_a_waiting_run(cp: Cp, agent: AgentUnderTest) -> None:
    await _started(cp, agent, PAGE)
    run, _ = await cp.cp.dispatch_run("acme", flow="approve")
    await until(lambda: _run(cp, run.id).status == "waiting", "the run to wait")
    await cp.cp.cancel_run("acme", run.id)
    await until(lambda: _run(cp, run.id).status == "cancelled", "the cancellation reported")
    record = agent.a.store.get_run(run.id)
    assert record is not None and record.status == "cancelled"


async def test_timers_fire_without_the_control_plane_and_draining_refuses(
    cp: Cp, agent: AgentUnderTest
) -> None:
    await _started(cp, agent, wait_flow(0.3), HELLO)
    a = agent.a
    run, _ = await cp.cp.dispatch_run("acme", flow="sleepy")
    await until(lambda: a.store.get_run(run.id) is not None, "the run to start")
    await cp.stop()
    await until(lambda: not a.link.ready.is_set(), "the link to go down")
    await until(
        lambda: (rec := a.store.get_run(run.id)) is not None and rec.status == "completed",
        "the timer to fire while the control plane is away",
    )
    a.request_stop()
    await until(lambda: a.pool.draining, "draining")
    ack = await a.dispatcher.start_run(StartRun(run_id="r-late", flow="hello", inputs={}))
    assert (ack.accepted, ack.reason) == (False, "draining")
