"""Readiness, reloads and the lifecycle record, on a real agent and control plane."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from link.linkhelpers import HELLO, AgentUnderTest, Cp, within

from agent.daemon import Agent
from agent.daemon_state import lifecycle_json, read_lifecycle
from agent.errors import ConfigError, UsageError
from agent.identity import load_private_key
from agent.link.outbox import OutboxObserver
from agent.settings import Settings
from agent.supervisor import Readiness


def test_readiness_names_what_it_waits_for_and_turns_off_when_stopping() -> None:
    readiness = Readiness(store="the store", sync="the first flow sync")
    readiness.require("api", "the local API")
    assert readiness.check() == "waiting for the store, the first flow sync, the local API"
    readiness.done("store")
    readiness.done("api")
    assert not readiness.event.is_set()
    readiness.done("sync", "connected, 3 flow(s) synced")
    assert readiness.check() is True and readiness.ready
    assert readiness.detail == "connected, 3 flow(s) synced"
    readiness.require("late", "something added after ready")  # ready stays ready
    assert readiness.check() is True
    readiness.stopping = True
    assert readiness.check() == "draining: the agent is stopping" and not readiness.ready


async def test_ready_only_after_the_published_flows_are_here(cp: Cp, agent: AgentUnderTest) -> None:
    await cp.publish(HELLO)
    running = await agent.start(connected=False)
    await within(running.lifecycle.readiness.event.wait(), "readiness")
    assert [ref.id for ref in running.sync.inventory()] == ["hello"]
    assert "connected, 1 flow(s) synced" in running.lifecycle.readiness.detail
    record = read_lifecycle(agent.settings.state_dir)
    assert record is not None and record["state"] == "ready"
    assert lifecycle_json(record)["since"].endswith("+00:00")  # type: ignore[index]
    running.lifecycle.sample()
    gauge = running.ops_metrics.link_state.labels(state="connected")
    assert gauge._value.get() == 1.0
    await agent.stop()
    assert read_lifecycle(agent.settings.state_dir)["state"] == "stopped"  # type: ignore[index]


async def test_a_reload_applies_live_settings_and_keeps_the_rest_for_a_restart(
    tmp_path: Path, cp: Cp, agent: AgentUnderTest
) -> None:
    running = await agent.start()
    before = running.settings
    new = replace(
        before,
        report_outputs=True,
        outbox_limit=77,
        status_interval=3.0,
        drain_timeout=9.0,
        sync="full",  # needs a restart
        allow_plaintext=True,  # needs a restart
    )
    running.lifecycle.reload_settings = lambda: new
    assert running.lifecycle.reload()
    assert isinstance(running.observer, OutboxObserver) and running.observer.report_outputs
    assert running.outbox.limit == 77
    assert running.link.options.status_interval == 3.0
    assert running.settings.drain_timeout == 9.0
    assert (running.settings.sync, running.settings.allow_plaintext) == (
        before.sync,
        before.allow_plaintext,
    )
    applied = running.ops_metrics.config_reloads.labels(result="applied")
    assert applied._value.get() == 1.0


async def test_a_reload_with_an_unreadable_ca_file_or_a_bad_file_changes_nothing(
    tmp_path: Path, cp: Cp, agent: AgentUnderTest
) -> None:
    running = await agent.start()
    before = running.settings
    broken = tmp_path / "ca.pem"
    broken.write_text("not a certificate")

    def with_bad_ca() -> Settings:
        return replace(before, ca_file=broken, report_outputs=True)

    def with_bad_file() -> Settings:
        raise UsageError("config file agent.toml: unknown setting(s) drain_timout")

    for source in (with_bad_ca, with_bad_file):
        running.lifecycle.reload_settings = source
        assert not running.lifecycle.reload()
        assert running.settings is before
    refused = running.ops_metrics.config_reloads.labels(result="refused")
    assert refused._value.get() == 2.0


async def test_a_revoked_agent_stops_itself_and_does_not_serve_again(
    cp: Cp, agent: AgentUnderTest
) -> None:
    assert agent.identity is not None
    running = await agent.start()
    await within(running.lifecycle.readiness.event.wait(), "readiness")
    await cp.cp.revoke("acme", agent.identity.agent_id)
    await within(running.stop_requested.wait(), "the revoked agent to stop itself")
    await agent.stop()
    assert running.exit_code == 78
    record = read_lifecycle(agent.settings.state_dir)
    assert record is not None and record["state"] == "stopped"
    again = Agent(
        agent.settings,
        store=agent.open_store(),
        identity=agent.identity,
        key=load_private_key(agent.settings.state_dir),
    )
    with pytest.raises(ConfigError, match="revoked this agent") as refused:
        await again.serve()
    assert refused.value.hint is not None and "--token-file" in refused.value.hint
    assert not again.ready.is_set()
