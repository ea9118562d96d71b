"""A refused run tells the admin why, by input name and type, never by input value."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import agent as agent_package
from agent.protocol.frames import RunAck, decode, encode
from controlplane.cli import main
from tests.support.agent import AgentUnderTest
from tests.support.controlplane import Cp
from tests.support.waits import until

HELLO: dict[str, Any] = json.loads(
    (Path(agent_package.__file__).parent / "examples" / "hello.json").read_text(encoding="utf-8")
)
# What `amount` was given: a stand-in for business data that must not leave the agent.
VALUE = "abc-4711"


async def test_a_refusal_names_the_input_and_the_agent_log_keeps_the_value(
    cp: Cp,
    agent: AgentUnderTest,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = await agent.start()
    await cp.publish(HELLO)
    await until(lambda: a.sync.is_synced("hello"), "hello synced")
    argv = [
        "run",
        "hello",
        "--tenant",
        "acme",
        "--input",
        f"amount={VALUE}",
        "--input",
        "colour=red",
        "--wait",
        "30",
        "--url",
        cp.url,
        "--admin-key",
        cp.cp.admin_key,
    ]
    with caplog.at_level(logging.WARNING, logger="flow_agent.dispatch"):
        # The CLI blocks on HTTP: off the loop that serves the control plane and the agent.
        code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert code == 1
    told = (
        "input 'amount' is not a number; "
        "input 'colour': unknown value (inputs of flow 'hello': amount, name)"
    )
    run_id, status = out.splitlines()[0].split()
    assert status == "failed"
    assert out.splitlines()[1] == f"error: the agent refused the run: {told} (inputs_invalid)"
    assert VALUE not in out
    stored = cp.cp.store.get_run("acme", run_id)
    assert (stored.status, stored.reason, stored.reason_message) == (
        "refused",
        "inputs_invalid",
        told,
    )
    assert VALUE not in json.dumps(stored.to_json()["result"])
    # The host's own log says everything, value included: it never leaves the host.
    assert any(f"'{VALUE}' is not a number" in r.getMessage() for r in caplog.records)
    assert a.store.list_runs() == []


def test_an_ack_without_a_message_is_the_frame_older_peers_know() -> None:
    plain = encode(RunAck(run_id="r1", accepted=False, reason="draining"))
    assert json.loads(plain) == {
        "v": 1,
        "type": "run_ack",
        "run_id": "r1",
        "accepted": False,
        "reason": "draining",
    }
    told = RunAck(run_id="r1", accepted=False, reason="draining", message="the agent is stopping")
    assert decode(encode(told)) == told
    assert decode(plain) == RunAck(run_id="r1", accepted=False, reason="draining", message=None)
