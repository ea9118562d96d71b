"""Case 17: the control plane repeats, reorders and replays old frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.protocol.frames import Ack, Message
from controlplane.hub import flow_frames, start_run_frame
from controlplane.service import ControlPlane

from .checker import check
from .conftest import Record
from .harness import CHARGE_EFFECTS, ControlPlaneThread, Daemon, Sink, charge_flow, wait_for


def _frames(cp: ControlPlaneThread, flow_id: str) -> list[Message]:
    async def get(plane: ControlPlane) -> list[Message]:
        active = await plane.db.run(lambda: plane.store.active_flow("acme", flow_id))
        assert active is not None
        return flow_frames(active)

    return cp.do(get)


def _send(cp: ControlPlaneThread, agent_id: str, frames: list[Message]) -> None:
    async def go(plane: ControlPlane) -> None:
        conn = plane.hub.connection(agent_id)
        assert conn is not None
        for frame in frames:
            assert await conn.send(frame)

    cp.do(go)


def _run_frame(cp: ControlPlaneThread, run_id: str) -> Message:
    async def get(plane: ControlPlane) -> Message:
        return start_run_frame(await plane.db.run(lambda: plane.store.get_run("acme", run_id)))

    return cp.do(get)


def test_17_duplicated_reordered_and_old_messages(
    cp: ControlPlaneThread, sink: Sink, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 17. The control plane sends every frame again, out of order and old.

    A start_run three more times; the pushes of versions 1, 2 and 3 of a
    flow after version 3 is active, in the order 1, 3, 2; acks of sequence
    numbers already acknowledged.  Pass: each is applied once (the run ran
    once, one effect per visit; version 3 stays active), a version lower
    than the current one is ignored with a warning in the log, and the
    events still reach the control plane once each, in order (checker).
    """
    versions: list[list[Message]] = []
    for pause in (0.01, 0.02, 0.03):
        cp.publish(charge_flow(sink.url, pause=pause))
        versions.append(_frames(cp, "charge"))
    daemon = daemons()
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
    wait_for(daemon.connected, "connect", timeout=60)
    agent_id = daemon.agent_id()
    wait_for(lambda: _active(daemon) == 3, "version 3 active")
    run_id = cp.dispatch("charge")
    assert run_id is not None
    again = _run_frame(cp, run_id)
    _send(cp, agent_id, [again, again, again])
    _send(cp, agent_id, [*versions[0], *versions[2], *versions[1]])
    _send(cp, agent_id, [Ack(seq=1), Ack(seq=1), Ack(seq=2)])
    wait_for(lambda: daemon.log_text().count("is not newer than version 3") >= 2, "the warnings")
    wait_for(
        lambda: _completed(cp, run_id) and daemon.status()["outbox"]["depth"] == 0,
        "the run reported",
        timeout=60,
    )
    assert _active(daemon) == 3
    warnings = [
        line
        for line in daemon.log_text().splitlines()
        if "WARNING" in line and "is not newer than version 3" in line
    ]
    assert len(warnings) == 2  # versions 1 and 2, each once
    assert daemon.terminate() == 0
    verdict = check(
        cp=cp,
        agent_id=agent_id,
        state_dir=daemon.state_dir,
        dispatched=[run_id],
        sink=sink,
        effects_per_run=CHARGE_EFFECTS,
    )
    assert len(sink.requests) == CHARGE_EFFECTS
    record(17, start_run_repeats=3, old_pushes=2, warnings=len(warnings), **verdict.figures())


def _active(daemon: Daemon) -> int | None:
    rows = daemon.read("SELECT version FROM flows WHERE flow_id = 'charge' AND active = 1")
    return None if not rows else int(rows[0][0])


def _completed(cp: ControlPlaneThread, run_id: str) -> bool:
    rows: list[Any] = cp.read("SELECT status FROM runs WHERE id = ?", (run_id,))
    return bool(rows and rows[0][0] == "completed")
