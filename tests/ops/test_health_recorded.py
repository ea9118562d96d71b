"""``flow-agent health`` asks where the running agent says its API listens.

A daemon started with ``api_listen = 127.0.0.1:0`` records the URL it bound
in its store; ``health --state-dir`` without that setting must find it there.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.cli import main
from agent.cli_ops import probe_address
from agent.daemon import Agent
from agent.identity import load_private_key
from agent.link.pairing import adopt_identity
from tests.support.agent import AgentUnderTest
from tests.support.waits import within


def _health(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["health", "--state-dir", str(state_dir)])
    return code, capsys.readouterr().out


async def test_health_asks_the_port_the_daemon_recorded(
    agent: AgentUnderTest, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon's own setting is not this command's: health sees the default api_listen.
    monkeypatch.delenv("FLOW_AGENT_API_LISTEN", raising=False)
    monkeypatch.delenv("FLOW_AGENT_CONFIG", raising=False)
    agent.configure(api_listen="127.0.0.1:0")
    state_dir = agent.settings.state_dir
    store = agent.open_store()
    assert agent.identity is not None
    adopt_identity(store, agent.identity)
    daemon = Agent(
        agent.settings,
        store=store,
        identity=agent.identity,
        key=load_private_key(state_dir),
        serve_api=True,
    )
    task = asyncio.get_running_loop().create_task(daemon.serve())
    try:
        await within(daemon.api_started.wait(), "the local API to listen")
        assert daemon.api_url is not None
        port = int(daemon.api_url.rsplit(":", 1)[1])
        assert port != 8355
        # Blocking HTTP in a thread: this loop serves the API it asks.
        code, out = await asyncio.to_thread(_health, state_dir, capsys)
        assert (code, out) == (0, f"healthy: the agent's API answers on 127.0.0.1:{port}\n")
    finally:
        daemon.request_stop()
        await within(task, "the agent to stop")
    # Stopped, it cleared the record: health falls back to api_listen (the default here).
    code, out = await asyncio.to_thread(_health, state_dir, capsys)
    assert "127.0.0.1:8355" in out and str(port) not in out


def test_a_recorded_url_wins_over_api_listen() -> None:
    assert probe_address("127.0.0.1:8355", bound="http://127.0.0.1:41234") == (
        "127.0.0.1",
        41234,
    )
    assert probe_address("127.0.0.1:8355", bound="http://0.0.0.0:41234") == ("127.0.0.1", 41234)
    assert probe_address("127.0.0.1:8355", bound="http://[::1]:41234") == ("::1", 41234)
    # An empty record (the daemon stopped) leaves api_listen.
    assert probe_address("127.0.0.1:9000", bound="") == ("127.0.0.1", 9000)
