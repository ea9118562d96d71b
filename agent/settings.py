"""Settings of the daemon-side commands (``pair``, ``run``, ``status``, ``quickstart``).

One table of settings, four sources, one rule: a command-line flag beats the
environment (``FLOW_AGENT_<NAME>``), which beats the TOML file given with
``--config`` (or ``FLOW_AGENT_CONFIG``, else ``/etc/flow-agent/agent.toml``
as root or under systemd, when it exists), which beats the default.  An unknown
key in the file or an unknown ``FLOW_AGENT_`` variable is an error naming it:
a typo must not silently leave a setting at its default.

Every setting is listed in ``SETTINGS`` with its type, default and a line of
help; ``docs/configuration.md`` documents them (a test holds that line).
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Final

from agent.errors import UsageError

ENV_PREFIX: Final = "FLOW_AGENT_"
SYSTEM_STATE_DIR: Final = Path("/var/lib/flow-agent")
CONFIG_NAME: Final = "agent.toml"
SYSTEM_CONFIG_FILE: Final = Path("/etc/flow-agent") / CONFIG_NAME

# Environment variables that are not settings but are read by a command.
# The pairing token is deliberately no setting: it must never sit in a config
# file next to settings that are kept for good.
OTHER_ENV: Final = frozenset(
    {"FLOW_AGENT_CONFIG", "FLOW_AGENT_PAIRING_TOKEN", "FLOW_AGENT_PAIRING_TOKEN_FILE"}
)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The resolved settings; build with :func:`load_settings`."""

    state_dir: Path
    # The link
    heartbeat: float | None = None  # None: what the control plane says (20 s by default)
    ca_file: Path | None = None
    allow_plaintext: bool = False
    max_frame_bytes: int = 4 * 1024 * 1024
    connect_timeout: float = 10.0
    status_interval: float = 30.0
    # Reporting
    report_outputs: bool = False
    outbox_limit: int = 100_000
    # Runs and the store
    timer_interval: float = 1.0
    drain_timeout: float = 20.0
    sync: str = "normal"
    # Logs (docs/operations.md)
    log_level: str = "info"
    log_format: str = "auto"
    # The local API and triggers (docs/api.md, docs/triggers.md)
    api_listen: str = "127.0.0.1:8355"
    api_token_file: Path | None = None
    api_public_url: str | None = None
    schedule_catch_up: str = "once"
    # Connectors (docs/connectors.md)
    http_allow_networks: tuple[str, ...] = ()
    http_deny_networks: tuple[str, ...] = ()
    http_max_response_bytes: int = 10 * 1024 * 1024

    def connector_options(self) -> dict[str, Any]:
        """The keyword arguments of ``default_registry`` that come from settings."""
        return {
            "http_allow_networks": self.http_allow_networks,
            "http_deny_networks": self.http_deny_networks,
            "http_max_response_bytes": self.http_max_response_bytes,
        }


HELP: Final[Mapping[str, str]] = {
    "state_dir": "where identity, flows, runs and the outbox live (0700)",
    "heartbeat": "seconds between websocket pings; a pong must come within as long "
    "(default: the control plane's value, 20)",
    "ca_file": "PEM file of the CA(s) that sign the control plane's certificate "
    "(default: the system CAs)",
    "allow_plaintext": "allow http:// and ws:// to a non-loopback control plane (insecure)",
    "max_frame_bytes": "largest websocket frame accepted or sent",
    "connect_timeout": "seconds to open a connection and finish the websocket handshake",
    "status_interval": "seconds between status reports to the control plane",
    "report_outputs": "send run outputs and page field values to the control plane "
    "(default false: business data stays here)",
    "outbox_limit": "events kept for the control plane; when reached, new runs are refused",
    "timer_interval": "seconds between checks for runs whose timer is due",
    "drain_timeout": "seconds a stop waits for running runs to finish or park",
    "sync": "the store's fsync level: off, normal, full or extra",
    "log_level": "the least severe log lines written: debug, info, warning or error",
    "log_format": "json (one object per line), text (for a person) or auto"
    " (text on a terminal, else json)",
    "api_listen": "HOST:PORT the local API listens on; beyond loopback it needs an API token"
    " (flow-agent api-token); port 0 picks a free port",
    "api_token_file": "file holding the API's bearer token (default: STATE_DIR/api.token"
    " when it exists)",
    "api_public_url": "the URL connector services call back to (default: http://API_LISTEN)",
    "schedule_catch_up": "schedule fires missed while the agent was down: once (run one"
    " run on start) or none (skip them)",
    "http_allow_networks": "networks (address/prefix) http and service connectors may reach"
    " although a denied network holds them, e.g. one metadata proxy",
    "http_deny_networks": "more networks http and service connectors must not reach;"
    " 'private' means loopback and the private ranges (link-local and cloud metadata"
    " are always denied)",
    "http_max_response_bytes": "largest response body an http or service connector"
    " reads; a larger one faults the element",
}

# Below this an event (up to 256 KiB) might not fit one frame.
_MINIMUM: Final = {"max_frame_bytes": 1024 * 1024}
_SYNC_LEVELS: Final = ("off", "normal", "full", "extra")
# Text settings that take one of a few words (lower-cased).
_CHOICES: Final[Mapping[str, tuple[str, ...]]] = {
    "sync": _SYNC_LEVELS,
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("auto", "json", "text"),
    "schedule_catch_up": ("once", "none"),
}
# A word that stands for a list of networks in the network settings.
NETWORK_ALIASES: Final = frozenset({"private"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def default_state_dir(
    *, env: Mapping[str, str] | None = None, euid: int | None = None, home: Path | None = None
) -> Path:
    """``/var/lib/flow-agent`` as root or under systemd, else the user's data directory."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if env.get("STATE_DIRECTORY"):
        # systemd's StateDirectory= hands the directory over by this variable.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if euid == 0 or env.get("INVOCATION_ID"):
        return SYSTEM_STATE_DIR
    home = Path.home() if home is None else home
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "flow-agent"
    data = env.get("XDG_DATA_HOME")
    base = Path(data) if data and Path(data).is_absolute() else home / ".local" / "share"
    return base / "flow-agent"


def _kinds() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(Settings)}


def names() -> list[str]:
    """Every setting's name, in declaration order."""
    return [f.name for f in fields(Settings)]


def _convert(name: str, kind: str, value: object, where: str) -> Any:
    """Turn ``value`` (text from env or flags, or a TOML value) into the setting's type."""
    optional = "None" in kind
    if optional and (value is None or value == ""):
        return None
    base = kind.replace(" | None", "")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true or false")
        if base == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            number = int(value) if isinstance(value, int) else int(str(value).strip())
            least = _MINIMUM.get(name, 1)
            if number < least:
                raise ValueError(f"must be at least {least}")
            return number
        if base == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            real = float(value) if isinstance(value, int | float) else float(str(value).strip())
            if not real > 0 or real == float("inf"):
                raise ValueError("must be a positive number")
            return real
        if base == "tuple[str, ...]":
            return _networks(value)
        if base == "Path":
            if not isinstance(value, str | Path) or not str(value):
                raise ValueError("expected a path")
            return Path(value).expanduser()
        if not isinstance(value, str):
            raise ValueError("expected text")
        choices = _CHOICES.get(name)
        if choices is not None:
            if value.strip().lower() not in choices:
                raise ValueError("expected one of " + ", ".join(choices))
            return value.strip().lower()
        if name == "api_listen":
            host, port = parse_listen(value)
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if name == "api_public_url" and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"{where}: bad value {value!r} for setting {name!r}: {exc}",
            hint=f"{name}: {HELP[name]}",
        ) from None


def _networks(value: object) -> tuple[str, ...]:
    """A list of networks: a TOML array, or text separated by commas or spaces (env, flags)."""
    if isinstance(value, str):
        items: list[object] = list(value.replace(",", " ").split())
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("expected a list of networks")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not a network: write networks as text")
        text = item.strip()
        if text.lower() in NETWORK_ALIASES:
            out.append(text.lower())
            continue
        try:
            out.append(str(ip_network(text)))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a network: write address/prefix with no host bits set,"
                " e.g. 10.1.2.0/24, 192.0.2.7/32 or fd00::/8, or 'private'"
            ) from None
    return tuple(out)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8355`` for IPv6) as (host, port); ValueError when it is not."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # a bare IPv6 address: the port is not where we looked
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8355 or [::1]:8355 (port 0-65535)")
    return host, int(port)


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file; unknown keys are refused by name."""
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    known = _kinds()
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise UsageError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}",
            hint="known settings: " + ", ".join(known),
        )
    return {k: _convert(k, known[k], v, str(path)) for k, v in doc.items()}


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings from ``FLOW_AGENT_<NAME>`` variables; an unknown one is refused by name."""
    known = _kinds()
    out: dict[str, Any] = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var in OTHER_ENV:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name not in known:
            raise UsageError(
                f"environment variable {var} names no setting",
                hint="known: " + ", ".join(ENV_PREFIX + k.upper() for k in known),
            )
        out[name] = _convert(name, known[name], value, f"environment {var}")
    return out


def default_config_file(
    *, env: Mapping[str, str] | None = None, euid: int | None = None
) -> Path | None:
    """The TOML file read when neither ``--config`` nor ``FLOW_AGENT_CONFIG`` names one.

    systemd's ``ConfigurationDirectory=`` (``CONFIGURATION_DIRECTORY``), else
    ``/etc/flow-agent/agent.toml`` as root or under systemd; only when the
    file exists (a default file may be absent, a named one may not).
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if env.get("CONFIGURATION_DIRECTORY"):
        candidate = Path(env["CONFIGURATION_DIRECTORY"].split(":")[0]) / CONFIG_NAME
    elif euid == 0 or env.get("INVOCATION_ID"):
        candidate = SYSTEM_CONFIG_FILE
    else:
        return None
    return candidate if candidate.is_file() else None


@dataclass(frozen=True, kw_only=True)
class Resolved:
    """The settings and where each value came from (``flow-agent config show``)."""

    settings: Settings
    sources: Mapping[str, str]  # "command line", "environment VAR", "file PATH", "default"
    config_file: Path | None


def resolve_settings(
    flags: Mapping[str, object] | None = None,
    *,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Resolved:
    """Resolve every setting: flag > environment > file > default, noting each one's source.

    ``flags`` holds the values given on the command line (``None`` means not
    given); ``config`` is ``--config`` (else ``FLOW_AGENT_CONFIG``, else the
    default file of :func:`default_config_file`).
    """
    env = os.environ if env is None else env
    known = _kinds()
    chosen: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config_path = config or (
        Path(env["FLOW_AGENT_CONFIG"]) if env.get("FLOW_AGENT_CONFIG") else None
    )
    if config_path is None:
        config_path = default_config_file(env=env)
    if config_path is not None:
        from_file = read_config_file(config_path)
        chosen.update(from_file)
        sources.update(dict.fromkeys(from_file, f"file {config_path}"))
    from_env = read_env(env)
    chosen.update(from_env)
    sources.update({k: f"environment {ENV_PREFIX}{k.upper()}" for k in from_env})
    for name, value in (flags or {}).items():
        if name not in known:
            raise ValueError(f"no setting {name!r}")  # a caller bug, not the user's
        if value is not None:
            chosen[name] = _convert(name, known[name], value, "command line")
            sources[name] = "command line"
    if "state_dir" not in chosen:
        chosen["state_dir"] = default_state_dir(env=env)
    for name in known:
        sources.setdefault(name, "default")
    return Resolved(settings=Settings(**chosen), sources=sources, config_file=config_path)


def load_settings(
    flags: Mapping[str, object] | None = None,
    *,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting: flag > environment > file > default (see :func:`resolve_settings`)."""
    return resolve_settings(flags, config=config, env=env).settings


def describe() -> list[tuple[str, str, str, str]]:
    """(name, environment variable, default, help) for every setting, for docs and --help."""
    rows = []
    for f in fields(Settings):
        if f.name == "state_dir":
            default = "see below"
        elif f.default == ():
            default = "none"
        else:
            default = repr(f.default)
        rows.append((f.name, ENV_PREFIX + f.name.upper(), default, HELP[f.name]))
    return rows


__all__ = [
    "ENV_PREFIX",
    "HELP",
    "OTHER_ENV",
    "SYSTEM_CONFIG_FILE",
    "Resolved",
    "Settings",
    "default_config_file",
    "default_state_dir",
    "describe",
    "load_settings",
    "names",
    "parse_listen",
    "read_config_file",
    "read_env",
    "resolve_settings",
]
