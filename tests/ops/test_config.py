"""Where each setting comes from, the default file, and ``flow-agent config show``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import UsageError
from agent.settings import SYSTEM_CONFIG_FILE, default_config_file, resolve_settings


def test_each_value_says_where_it_came_from(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('drain_timeout = 5.0\nlog_level = "warning"\nsync = "full"\n')
    env = {"FLOW_AGENT_LOG_LEVEL": "debug", "FLOW_AGENT_CONFIG": str(config), "HOME": str(tmp_path)}
    resolved = resolve_settings({"sync": "extra", "state_dir": None}, env=env)
    assert resolved.config_file == config
    assert resolved.settings.sync == "extra" and resolved.sources["sync"] == "command line"
    assert resolved.settings.log_level == "debug"
    assert resolved.sources["log_level"] == "environment FLOW_AGENT_LOG_LEVEL"
    assert resolved.settings.drain_timeout == 5.0
    assert resolved.sources["drain_timeout"] == f"file {config}"
    assert resolved.sources["heartbeat"] == "default"


@pytest.mark.parametrize(("name", "value"), [("log_level", "loud"), ("log_format", "xml")])
def test_log_settings_take_known_words_only(name: str, value: str) -> None:
    with pytest.raises(UsageError) as bad:
        resolve_settings(env={f"FLOW_AGENT_{name.upper()}": value})
    assert name in bad.value.message and repr(value) in bad.value.message


def test_the_default_file_follows_systemd_root_and_presence(tmp_path: Path) -> None:
    confdir = tmp_path / "etc"
    confdir.mkdir()
    env = {"CONFIGURATION_DIRECTORY": str(confdir)}
    assert default_config_file(env=env, euid=1000) is None  # absent: no file, no error
    (confdir / "agent.toml").write_text("")
    assert default_config_file(env=env, euid=1000) == confdir / "agent.toml"
    assert default_config_file(env={}, euid=1000) is None  # a user gets no system file
    expected = SYSTEM_CONFIG_FILE if SYSTEM_CONFIG_FILE.is_file() else None
    assert default_config_file(env={}, euid=0) == expected
    assert default_config_file(env={"INVOCATION_ID": "x"}, euid=1000) == expected


def test_config_show_prints_toml_with_sources_and_masks_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("report_outputs = true\noutbox_limit = 500\n")
    for var in ("FLOW_AGENT_CONFIG", "FLOW_AGENT_STATE_DIR", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLOW_AGENT_PAIRING_TOKEN", "fa1.very-secret-token-value")
    monkeypatch.setenv("HTTPS_PROXY", "http://user:hunter22@proxy.example:3128")
    monkeypatch.setenv("FLOW_AGENT_DRAIN_TIMEOUT", "7")
    state = tmp_path / "state"
    code = main(["config", "show", "--config", str(config), "--state-dir", str(state)])
    out = capsys.readouterr().out
    assert code == 0
    assert "very-secret-token-value" not in out and "hunter22" not in out
    lines = out.splitlines()
    assert lines[0] == f"# config file: {config}"
    # Names are padded to one column: compare with the padding squeezed out.
    squeezed = [" ".join(line.split()) for line in lines]
    assert f'state_dir = "{state}" # command line' in squeezed
    assert f"report_outputs = true # file {config}" in squeezed
    assert "drain_timeout = 7.0 # environment FLOW_AGENT_DRAIN_TIMEOUT" in squeezed
    assert "# heartbeat = (unset) # default" in squeezed
    assert "http_deny_networks = [] # default" in squeezed
    assert "# environment FLOW_AGENT_PAIRING_TOKEN = [redacted]" in lines
    assert "# environment HTTPS_PROXY = http://user:***@proxy.example:3128" in lines
    # What it prints is an agent.toml the agent reads back to the same values.
    again = tmp_path / "again.toml"
    again.write_text("\n".join(line for line in lines if not line.startswith("#")))
    back = resolve_settings(config=again, env={"HOME": str(tmp_path)}).settings
    assert back.report_outputs is True and back.outbox_limit == 500 and back.drain_timeout == 7
    assert back.http_deny_networks == ()

    assert (
        main(["config", "show", "--json", "--config", str(config), "--state-dir", str(state)]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"]["outbox_limit"] == {"value": 500, "source": f"file {config}"}
    assert doc["environment"]["FLOW_AGENT_PAIRING_TOKEN"] == "[redacted]"


def test_config_show_names_an_unknown_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("drain_timout = 5\n")
    assert main(["config", "show", "--config", str(config)]) == 2
    assert "drain_timout" in capsys.readouterr().err
