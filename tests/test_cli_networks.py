"""The connector settings reach ``exec``: flag, environment and file, against a real server.

A real HTTP server listens on 127.0.0.1; ``flow-agent exec`` runs in this
process.  Loopback is reachable by default, so every refusal below comes from
a setting, and the server's request log proves no request left the agent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.connectors.guard import PRIVATE_ALIAS, PRIVATE_NETWORKS, parse_networks
from agent.settings import NETWORK_ALIASES, load_settings, read_config_file
from tests.e2e.http_target import Target, ping_flow, target

__all__ = ["target"]  # the fixture, imported for pytest


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only what a test sets may reach exec: no FLOW_AGENT_* of the caller, no system file.
    import os

    for name in list(os.environ):
        if name.startswith("FLOW_AGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", "/nonexistent-flow-agent-config")


def _flow(tmp_path: Path, port: int) -> str:
    path = tmp_path / "ping.json"
    path.write_text(json.dumps(ping_flow(port)))
    return str(path)


def _exec(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["exec", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def test_loopback_is_reachable_by_default(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: Target
) -> None:
    code, result, _ = _exec(capsys, _flow(tmp_path, target.port))
    assert code == 0 and result["status"] == "completed", result
    assert target.paths == ["/ping"]


def test_a_deny_flag_refuses_the_network_before_any_request(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: Target
) -> None:
    code, result, _ = _exec(
        capsys, _flow(tmp_path, target.port), "--http-deny-network", "127.0.0.0/8"
    )
    assert code == 1 and result["status"] == "failed", result
    message = result["error"]["message"]
    assert "127.0.0.1" in message and "127.0.0.0/8" in message and "http_deny_networks" in message
    assert target.paths == []


def test_the_environment_and_the_word_private_deny_loopback(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOW_AGENT_HTTP_DENY_NETWORKS", "203.0.113.0/24, private")
    code, result, _ = _exec(capsys, _flow(tmp_path, target.port))
    assert code == 1 and "127.0.0.0/8" in result["error"]["message"], result
    assert target.paths == []


def test_the_config_file_applies_and_a_narrower_allow_reopens_one_host(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: Target
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('http_deny_networks = ["private"]\n')
    flow = _flow(tmp_path, target.port)
    code, result, _ = _exec(capsys, flow, "--config", str(config))
    assert code == 1 and result["status"] == "failed"
    assert target.paths == []

    # The most specific network decides: one allowed host inside a denied range.
    config.write_text('http_deny_networks = ["private"]\nhttp_allow_networks = ["127.0.0.1/32"]\n')
    code, result, _ = _exec(capsys, flow, "--config", str(config))
    assert code == 0 and result["status"] == "completed", result
    assert target.paths == ["/ping"]

    # A flag beats the file.
    code, result, _ = _exec(
        capsys, flow, "--config", str(config), "--http-deny-network", "127.0.0.1/32"
    )
    assert code == 1 and result["status"] == "failed"
    assert target.paths == ["/ping"]


def test_the_response_limit_is_a_setting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: Target
) -> None:
    target.body_bytes = 4096
    flow = _flow(tmp_path, target.port)
    code, result, _ = _exec(capsys, flow, "--http-max-response-bytes", "1024")
    assert code == 1 and result["status"] == "failed", result
    assert "exceeds the 1 KiB limit" in result["error"]["message"]
    code, result, _ = _exec(capsys, flow)
    assert code == 0 and len(result["outputs"]["reply"]["pad"]) == 4096


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--http-deny-network", "10.0.0.1/8"], "'10.0.0.1/8' is not a network"),
        (["--http-allow-network", "intranet"], "'intranet' is not a network"),
        (["--http-max-response-bytes", "0"], "must be at least 1"),
    ],
)
def test_a_bad_setting_is_refused_by_name_before_any_state(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], named: str
) -> None:
    state = tmp_path / "state"
    code = main(["exec", _flow(tmp_path, 9), "--state-dir", str(state), *argv])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err
    assert not state.exists()


def test_list_settings_from_each_source(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('http_allow_networks = ["10.1.0.0/16", "fd00::/8"]\n')
    assert read_config_file(config) == {"http_allow_networks": ("10.1.0.0/16", "fd00::/8")}
    settings = load_settings(
        {"http_deny_networks": ["PRIVATE"]},
        config=config,
        env={"FLOW_AGENT_HTTP_ALLOW_NETWORKS": "192.0.2.7 198.51.100.0/24"},
    )
    # A single address is a /32; the environment beats the file; the word is kept.
    assert settings.http_allow_networks == ("192.0.2.7/32", "198.51.100.0/24")
    assert settings.http_deny_networks == ("private",)
    config.write_text("http_deny_networks = [10]\n")
    with pytest.raises(Exception, match="write networks as text"):
        read_config_file(config)


def test_the_word_private_means_the_same_in_the_settings_and_the_guard() -> None:
    assert {PRIVATE_ALIAS} == NETWORK_ALIASES
    expanded = {str(n) for n in parse_networks([PRIVATE_ALIAS], setting="http_deny_networks")}
    assert expanded == set(PRIVATE_NETWORKS)
