"""``flow-agent doctor`` against the real control plane, with real failures."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import pytest
import trustme
from link.linkhelpers import AgentUnderTest, Cp

from agent.cli import main
from agent.doctor import (
    FAIL,
    PASS,
    SKIP,
    Check,
    check_clock,
    check_disk,
    check_state_dir,
    format_checks,
    masked_url,
    run_checks,
)


def _results(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.result for c in checks}


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    (path / "state.db").write_text("")
    (path / "state.db").chmod(0o600)
    return path


def test_the_state_directory_must_be_private_and_one_owners(tmp_path: Path) -> None:
    state = _private_dir(tmp_path / "state")
    assert check_state_dir(state).result == PASS
    (state / "identity.json").write_text("{}")
    (state / "identity.json").chmod(0o644)
    loose = check_state_dir(state)
    assert loose.result == FAIL and "identity.json is mode 0644" in loose.detail
    assert loose.hint is not None and "chmod 600" in loose.hint
    (state / "identity.json").chmod(0o600)
    state.chmod(0o750)
    assert "mode 0750, not 0700" in check_state_dir(state).detail
    state.chmod(0o700)
    missing = check_state_dir(tmp_path / "nowhere")
    assert missing.result == FAIL and "does not exist" in missing.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another owner needs root")
def test_a_file_of_another_owner_is_found(tmp_path: Path) -> None:
    state = _private_dir(tmp_path / "state")
    os.chown(state / "state.db", 12345, 12345)  # what `sudo flow-agent ...` leaves behind
    found = check_state_dir(state)
    assert found.result == FAIL and "state.db belongs to uid 12345" in found.detail
    # Someone else's directory, seen by an ordinary user.
    assert "not to this user" in check_state_dir(state, euid=4242).detail


def test_clock_disk_and_masking_rules(tmp_path: Path) -> None:
    assert check_clock(None).result == SKIP
    assert check_clock(4.2).result == PASS and "behind" in check_clock(4.2).detail
    late = check_clock(-95.0)
    assert late.result == FAIL and "95.0 s ahead of" in late.detail and "NTP" in (late.hint or "")
    assert check_disk(tmp_path).result == PASS
    assert masked_url("http://u:p4ss@proxy:3128/x") == "http://u:***@proxy:3128/x"
    assert masked_url("http://proxy:3128") == "http://proxy:3128"


async def test_a_healthy_agent_passes_every_check(cp: Cp, agent: AgentUnderTest) -> None:
    checks = await run_checks(agent.settings)
    assert _results(checks) == dict.fromkeys(
        [
            "state directory",
            "identity",
            "proxy",
            "dns",
            "tcp",
            "tls",
            "websocket auth",
            "clock",
            "free disk",
        ],
        PASS,
    )
    lines = format_checks(checks)
    assert lines[-1] == "every check passed"
    assert any("authenticated as ag_" in line for line in lines)
    assert agent.identity is not None
    # The control plane saw a real session: the agent was online.
    record = cp.cp.store.get_agent(agent.identity.agent_id)
    assert record is not None and record.last_seen is not None


async def test_with_the_daemon_running_doctor_does_not_steal_its_session(
    cp: Cp, agent: AgentUnderTest
) -> None:
    running = await agent.start()
    sessions = running.link.sessions
    checks = await run_checks(agent.settings)
    ws = next(c for c in checks if c.name == "websocket auth")
    assert ws.result == PASS and "not authenticating" in ws.detail
    assert _results(checks)["clock"] == PASS  # hello alone carries the server's time
    assert running.link.ready.is_set() and running.link.sessions == sessions


async def test_a_revoked_agent_fails_identity_and_skips_the_network(
    cp: Cp, agent: AgentUnderTest
) -> None:
    assert agent.identity is not None
    running = await agent.start()
    await cp.cp.revoke("acme", agent.identity.agent_id)
    from link.linkhelpers import until

    from agent.link.state import LinkState, read_link_status

    await until(lambda: read_link_status(running.store).state is LinkState.REVOKED, "revoked")
    await agent.stop()
    checks = await run_checks(agent.settings)
    results = _results(checks)
    assert results["identity"] == FAIL
    identity = next(c for c in checks if c.name == "identity")
    assert "revoked" in identity.detail and "--force" in (identity.hint or "")
    assert results["tcp"] == SKIP and results["websocket auth"] == SKIP


async def test_a_stopped_control_plane_fails_tcp(cp: Cp, agent: AgentUnderTest) -> None:
    await cp.stop()
    checks = await run_checks(agent.settings)
    results = _results(checks)
    assert results["dns"] == PASS and results["tcp"] == FAIL
    assert results["tls"] == SKIP and results["websocket auth"] == SKIP
    assert format_checks(checks)[-1] == "1 check(s) failed"


async def test_tls_is_verified_and_a_wrong_ca_is_named(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    handle = await Cp(tmp_path / "cp", tls=context).start()
    await handle.tenant("acme")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    under_test = AgentUnderTest(tmp_path / "agent", ca_file=ca_file)
    try:
        await under_test.pair(await handle.token())
        assert under_test.store is not None
        under_test.store.close()
        under_test.store = None
        good = await run_checks(under_test.settings)
        tls = next(c for c in good if c.name == "tls")
        assert tls.result == PASS and "verified" in tls.detail and "expires in" in tls.detail
        assert _results(good)["websocket auth"] == PASS
        wrong = tmp_path / "wrong.pem"
        trustme.CA().cert_pem.write_to_path(str(wrong))
        under_test.configure(ca_file=wrong)
        bad = await run_checks(under_test.settings)
        tls = next(c for c in bad if c.name == "tls")
        assert tls.result == FAIL and "ca_file" in (tls.hint or "")
        assert _results(bad)["websocket auth"] == FAIL
    finally:
        await under_test.stop()
        await handle.stop()


async def test_a_malformed_proxy_is_reported(
    cp: Cp, agent: AgentUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("HTTPS_PROXY", "ftp://user:pw@proxy.invalid:21")
    monkeypatch.setenv("https_proxy", "ftp://user:pw@proxy.invalid:21")
    checks = await run_checks(agent.settings)
    proxy = next(c for c in checks if c.name == "proxy")
    assert proxy.result == FAIL and "pw" not in proxy.detail and "***" in proxy.detail


def test_the_command_exits_1_and_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _private_dir(tmp_path / "state")
    assert main(["doctor", "--state-dir", str(state)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  identity" in out and "hint: pair this host" in out
    assert "SKIP  websocket auth" in out
    assert main(["doctor", "--json", "--state-dir", str(state)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["checks"][1]["result"] == FAIL
