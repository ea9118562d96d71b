"""``config show``, ``doctor`` and ``health``: the commands admins and probes run.

``health`` is what a container's HEALTHCHECK runs every 30 s: it imports
little and asks the local API's ``/livez`` one question.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
from pathlib import Path
from typing import Any, Final

from agent.errors import AgentError, OperationError

EXIT_OK, EXIT_FAILED = 0, 1
HEALTH_TIMEOUT: Final = 3.0
# Names that hold credentials, wherever they appear (a setting, an environment variable).
_SECRET_WORDS: Final = ("token", "password", "secret", "key")
_PROXY_VARS: Final = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the agent's state directory (default /var/lib/flow-agent as root or under"
        " systemd, else the user's data directory; env FLOW_AGENT_STATE_DIR)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (env FLOW_AGENT_CONFIG; default /etc/flow-agent/agent.toml"
        " as root or under systemd, when it exists)",
    )


def add_parsers(sub: Any) -> None:
    """Register ``config``, ``doctor`` and ``health`` on ``flow-agent``'s subparsers."""
    p = sub.add_parser(
        "config",
        help="show the effective configuration",
        description="Inspect the configuration the daemon-side commands would use.",
    )
    config_sub = p.add_subparsers(
        dest="config_command", metavar="COMMAND", required=True, parser_class=type(p)
    )
    show = config_sub.add_parser(
        "show",
        help="every setting's effective value and where it came from",
        description="Print every setting's effective value and where it came from (command"
        " line, environment, file, default), as TOML that agent.toml accepts; secrets are"
        " masked. Also shows the pairing-token and proxy variables that `run` reads.",
    )
    _common(show)
    show.add_argument("--json", action="store_true", help="print the configuration as JSON")
    show.set_defaults(handler=config_show_cmd)

    p = sub.add_parser(
        "doctor",
        help="check the state directory, identity and the path to the control plane",
        description="Check the state directory (owner, modes), the identity, the proxy, DNS,"
        " TCP, TLS and the websocket handshake with the control plane, the clock against it,"
        " and free disk. One pass/fail line per check, with a hint; exit 1 if any fails.",
    )
    _common(p)
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(handler=doctor_cmd)

    p = sub.add_parser(
        "health",
        help="exit 0 when the local agent's API answers /livez (container HEALTHCHECK)",
        description="Ask the local API whether the agent lives: exit 0 and one line when"
        " /livez answers, else exit 1 and one line saying why. Asks where the running agent"
        " recorded it listens (in its state directory), else api_listen.",
    )
    _common(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=HEALTH_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the answer (default {HEALTH_TIMEOUT:g})",
    )
    p.set_defaults(handler=health_cmd)


def _resolve(args: argparse.Namespace) -> Any:
    from agent.settings import resolve_settings

    return resolve_settings(
        {"state_dir": args.state_dir}, config=Path(args.config) if args.config else None
    )


# -- config show --------------------------------------------------------------------------


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return not lowered.endswith("_file") and any(w in lowered for w in _SECRET_WORDS)


def _masked(name: str, value: object) -> object:
    from agent.doctor import masked_url

    if value is None:
        return None
    if is_secret_name(name):
        return "[redacted]"
    if isinstance(value, str) and "://" in value:
        return masked_url(value)
    return value


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def config_show_cmd(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from agent.settings import OTHER_ENV

    resolved = _resolve(args)
    settings = resolved.settings
    rows = [
        (f.name, _masked(f.name, getattr(settings, f.name)), resolved.sources[f.name])
        for f in fields(settings)
    ]
    others = {
        name: ("[redacted]" if is_secret_name(name) else os.environ[name])
        for name in sorted(OTHER_ENV)
        if os.environ.get(name)
    }
    proxies = {
        name: _masked(name, os.environ[name]) for name in _PROXY_VARS if os.environ.get(name)
    }
    if args.json:
        print(
            json.dumps(
                {
                    "config_file": None
                    if resolved.config_file is None
                    else str(resolved.config_file),
                    "settings": {
                        n: {
                            "value": None
                            if v is None
                            else (v if isinstance(v, bool | int | float) else str(v)),
                            "source": s,
                        }
                        for n, v, s in rows
                    },
                    "environment": {**others, **proxies},
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"# config file: {resolved.config_file or 'none'}")
    width = max(len(n) for n, _, _ in rows)
    for name, value, source in rows:
        if value is None:
            print(f"# {name:<{width - 2}} = (unset)  # {source}")
        else:
            print(f"{name:<{width}} = {_toml(value)}  # {source}")
    for name, value in {**others, **proxies}.items():
        print(f"# environment {name} = {value}")
    return EXIT_OK


# -- doctor ----------------------------------------------------------------------------------


def doctor_cmd(args: argparse.Namespace) -> int:
    import asyncio

    from agent.doctor import Check, checks_json, format_checks, run_checks

    try:
        settings = _resolve(args).settings
    except AgentError as exc:
        checks = [
            Check(
                name="configuration",
                result="fail",
                detail=exc.message,
                hint=exc.hint or "fix the file or the variable it names",
            )
        ]
    else:
        checks = asyncio.run(run_checks(settings))
    if args.json:
        print(checks_json(checks))
    else:
        for line in format_checks(checks):
            print(line)
    return EXIT_FAILED if any(c.failed for c in checks) else EXIT_OK


# -- health ----------------------------------------------------------------------------------


def probe_address(listen: str, *, bound: str | None = None) -> tuple[str, int]:
    """Where to reach an API that listens on ``listen`` from this host.

    ``bound`` is the URL the running daemon recorded (``api.url``); when there
    is one it wins: the daemon may have been started with another
    ``api_listen`` than this command sees, or with any free port (port 0).
    """
    from urllib.parse import urlsplit

    from agent.settings import parse_listen

    parts = urlsplit(bound or "")
    if parts.hostname and parts.port:
        host, port = parts.hostname, parts.port
    else:
        host, port = parse_listen(listen)
    if port == 0:
        raise OperationError(
            f"api_listen is {listen} (any free port) and no running agent recorded its port",
            hint="start the agent, or give api_listen a fixed port (default 127.0.0.1:8355)",
        )
    # A wildcard listener answers on loopback too.
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host), port


def health_cmd(args: argparse.Namespace) -> int:
    try:
        from agent.daemon_state import read_meta

        settings = _resolve(args).settings
        # Read without the lock, as `status` does; empty once the daemon stopped.
        bound = read_meta(settings.state_dir, "api.url")
        host, port = probe_address(settings.api_listen, bound=bound)
    except AgentError as exc:
        print(f"unhealthy: {exc.message}")
        return EXIT_FAILED
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
    try:
        conn.request("GET", "/livez", headers={"Host": shown, "User-Agent": "flow-agent health"})
        response = conn.getresponse()
        body = response.read(4096)
    except (OSError, http.client.HTTPException) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        print(f"unhealthy: no answer from the agent's API on {shown}: {reason}")
        return EXIT_FAILED
    finally:
        conn.close()
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        status = None
    if response.status != 200 or status != "ok":
        print(f"unhealthy: {shown}/livez answered {response.status} {status or body[:80]!r}")
        return EXIT_FAILED
    print(f"healthy: the agent's API answers on {shown}")
    return EXIT_OK


__all__ = ["add_parsers", "config_show_cmd", "doctor_cmd", "health_cmd", "probe_address"]
