"""Case 29: flows that are not what the control plane's key signed are refused."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agent.protocol.frames import FlowPush, Message
from agent.protocol.signing import flow_sha256, generate_private_key, sign_flow

from .conftest import Record
from .harness import ControlPlaneThread, Daemon, Sink, charge_flow, wait_for
from .test_messages import _active, _completed, _frames, _send


def _push(frames: list[Message]) -> FlowPush:
    (push,) = [f for f in frames if isinstance(f, FlowPush)]
    return push


def _flip(signature: str) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[7] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _as_v3(push: FlowPush, **changes: Any) -> FlowPush:
    definition = {**push.definition, "version": 3, **changes}
    return replace(push, version=3, definition=definition, sha256=flow_sha256(definition))


def test_29_flow_signatures(
    cp: ControlPlaneThread, sink: Sink, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 29. Version 2 is active; then come a version 3 with one flipped byte in its
    signature, one with a flipped byte in its definition, one signed by an unknown
    key, one unsigned, and the genuine old version 1 again.

    Pass: every one rejected (a flow.rejected report naming why), version 2
    stays active and a run dispatched afterwards completes on it.
    "Expired metadata" does not apply: flow/v1 signatures carry no expiry
    (a rollback is refused by the monotonic version and the activation
    serial instead, tests/link/test_link_sync.py).
    """
    cp.publish(charge_flow(sink.url, pause=0.01))
    v1 = _push(_frames(cp, "charge"))
    cp.publish(charge_flow(sink.url, pause=0.02))
    v2 = _push(_frames(cp, "charge"))
    daemon = daemons()
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
    wait_for(daemon.connected, "connect", timeout=60)
    agent_id = daemon.agent_id()
    wait_for(lambda: _active(daemon) == 2, "version 2 active")
    good3 = _as_v3(v2)
    stranger = generate_private_key()
    forged = {
        "flipped signature byte": replace(good3, signature=_flip(v2.signature)),
        "flipped definition byte": _as_v3(v2, start="notify"),
        "unknown key": replace(
            good3,
            signature=sign_flow(
                stranger, tenant="acme", flow_id="charge", version=3, definition=good3.definition
            ),
        ),
        "unsigned": replace(good3, signature=""),
        "older version": v1,
    }
    _send(cp, agent_id, list(forged.values()))

    def reasons() -> list[str]:
        rows = cp.read(
            "SELECT data FROM events WHERE agent_id = ? AND kind = 'flow.rejected'", (agent_id,)
        )
        return [str(r[0]) for r in rows]

    refused_frames = daemon.log_text().count("refused a frame from the control plane")
    wait_for(lambda: len(reasons()) + refused_frames >= len(forged), "every forgery rejected")
    assert _active(daemon) == 2
    assert daemon.read("SELECT count(*) FROM flows WHERE version = 3")[0][0] == 0
    run_id = cp.dispatch("charge")
    assert run_id is not None
    wait_for(lambda: _completed(cp, run_id), "a run on the last good version")
    version = cp.read("SELECT result FROM runs WHERE id = ?", (run_id,))[0][0]
    assert '"version":2' in version.replace(" ", "")
    assert daemon.terminate() == 0
    record(
        29,
        rejected=sorted(forged),
        flow_rejected_reports=len(reasons()),
        refused_frames=refused_frames,
        active_version=2,
    )
