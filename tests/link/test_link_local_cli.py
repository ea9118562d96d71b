"""``exec`` and ``resume`` stay out of a paired agent's state directory.

The agent is paired with the real control plane, syncs a signed flow and
runs it; then, the daemon stopped, the local commands are pointed at its
state directory and must leave its store as the daemon left it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.store.sqlite import SqliteStore

from .linkhelpers import HELLO, PAGE, AgentUnderTest, Cp, until


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_exec_and_resume_refuse_a_paired_state_dir(
    cp: Cp, agent: AgentUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = await agent.start()
    await cp.publish(HELLO)
    await cp.publish(PAGE)
    await until(lambda: a.store.active_flow("approve") is not None, "the flows synced")
    waiting = await a.runner.start("approve", {})
    assert waiting["status"] == "waiting"
    await agent.stop()
    state = str(agent.settings.state_dir)
    local = tmp_path / "hello-local.json"
    local.write_text(json.dumps({**HELLO, "name": "a local edit"}))
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "hello.json").write_text(local.read_text())

    attempts = [
        ("exec", str(local), "--state-dir", state),
        ("resume", waiting["run_id"], "--state-dir", state),
        ("resume", waiting["run_id"], "--state-dir", state, "--outcome", "ok"),
        ("resume", waiting["run_id"], "--state-dir", state, "--flows", str(flows)),
    ]
    for argv in attempts:
        code, out, err = await asyncio.to_thread(_cli, capsys, *argv)
        assert code == 2, (argv, err)
        assert out == ""
        assert f"{state} is the state directory of a paired agent" in err
        assert agent.identity is not None and agent.identity.agent_id in err
        assert "use another --state-dir" in err

    # The store is as the daemon left it: the signed version active, the run still waiting.
    with SqliteStore.open(agent.settings.state_dir) as store:
        versions = [(f.flow_id, f.version, f.signature is not None) for f in store.list_flows()]
        assert versions == [("approve", 1, True), ("hello", 1, True)]
        record = store.get_run(waiting["run_id"])
        assert record is not None and record.status == "waiting"


async def test_exec_into_an_unpaired_state_dir_still_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "hello.json"
    local.write_text(json.dumps(HELLO))
    code, out, err = await asyncio.to_thread(
        _cli, capsys, "exec", str(local), "--state-dir", str(tmp_path / "state"), "--json"
    )
    assert code == 0, err
    assert json.loads(out)["outputs"]["greeting"] == "Hello, world!"
