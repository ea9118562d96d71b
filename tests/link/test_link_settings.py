"""Settings: flag > environment > file > default; unknown keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import UsageError
from agent.settings import (
    SYSTEM_STATE_DIR,
    default_state_dir,
    describe,
    load_settings,
    names,
)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_precedence_is_flag_then_env_then_file_then_default(tmp_path: Path) -> None:
    config = _config(tmp_path, 'heartbeat = 5.0\noutbox_limit = 10\nsync = "full"\n')
    env = {"FLOW_AGENT_HEARTBEAT": "7", "FLOW_AGENT_STATE_DIR": str(tmp_path / "env")}
    settings = load_settings({"heartbeat": 9.0}, config=config, env=env)
    assert settings.heartbeat == 9.0  # flag
    assert settings.state_dir == tmp_path / "env"  # env
    assert settings.outbox_limit == 10 and settings.sync == "full"  # file
    assert settings.report_outputs is False and settings.drain_timeout == 20.0  # defaults
    from_env = load_settings({"heartbeat": None}, config=config, env=env)
    assert from_env.heartbeat == 7.0


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    config = _config(tmp_path, "report_outputs = true\n")
    settings = load_settings(env={"FLOW_AGENT_CONFIG": str(config), "HOME": str(tmp_path)})
    assert settings.report_outputs is True


def test_unknown_keys_are_errors_naming_the_key(tmp_path: Path) -> None:
    config = _config(tmp_path, "heartbaet = 5\n")
    with pytest.raises(UsageError) as in_file:
        load_settings(config=config, env={})
    assert "heartbaet" in in_file.value.message
    with pytest.raises(UsageError) as in_env:
        load_settings(env={"FLOW_AGENT_OUTBOX_LIMT": "5"})
    assert "FLOW_AGENT_OUTBOX_LIMT" in in_env.value.message
    # The pairing token variables are read by `run`, never settings.
    load_settings(env={"FLOW_AGENT_PAIRING_TOKEN": "x", "HOME": str(tmp_path)})


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FLOW_AGENT_HEARTBEAT", "soon"),
        ("FLOW_AGENT_HEARTBEAT", "-1"),
        ("FLOW_AGENT_OUTBOX_LIMIT", "1.5"),
        ("FLOW_AGENT_REPORT_OUTPUTS", "maybe"),
        ("FLOW_AGENT_SYNC", "sometimes"),
    ],
)
def test_bad_values_name_setting_and_source(var: str, value: str) -> None:
    with pytest.raises(UsageError) as bad:
        load_settings(env={var: value})
    assert var in bad.value.message and repr(value) in bad.value.message


def test_bad_toml_and_wrong_types_in_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as broken:
        load_settings(config=_config(tmp_path, "heartbeat = \n"), env={})
    assert "not valid TOML" in broken.value.message
    with pytest.raises(UsageError) as typed:
        load_settings(config=_config(tmp_path, 'allow_plaintext = "yes please"\n'), env={})
    assert "allow_plaintext" in typed.value.message
    with pytest.raises(UsageError) as missing:
        load_settings(config=tmp_path / "absent.toml", env={})
    assert "cannot read config file" in missing.value.message


def test_default_state_dir_follows_root_systemd_and_xdg(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_state_dir(env={}, euid=0, home=home) == SYSTEM_STATE_DIR
    assert default_state_dir(env={"INVOCATION_ID": "x"}, euid=1000, home=home) == SYSTEM_STATE_DIR
    assert default_state_dir(env={"STATE_DIRECTORY": "/srv/fa"}, euid=1000, home=home) == Path(
        "/srv/fa"
    )
    xdg = tmp_path / "xdg"
    assert default_state_dir(env={"XDG_DATA_HOME": str(xdg)}, euid=1000, home=home) == (
        xdg / "flow-agent"
    )
    assert default_state_dir(env={}, euid=1000, home=home) == (
        home / ".local" / "share" / "flow-agent"
    )


def test_every_setting_is_described_and_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "pairing.md").read_text()
    rows = describe()
    assert [r[0] for r in rows] == names()
    for name, env, _default, help_text in rows:
        assert help_text
        assert f"`{name}`" in doc and f"`{env}`" in doc, f"{name} is missing from docs/pairing.md"
