"""``pair``, ``run``, ``status`` and ``quickstart``: the daemon-side commands (spec/cli.md).

``add_parsers`` registers them on ``flow-agent``'s subcommand table; the
handlers load settings (flag > ``FLOW_AGENT_<NAME>`` > ``--config`` file >
default) and call into ``agent.daemon`` and ``agent.link``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import OperationError, StateDirLocked, UsageError
from agent.identity import load_identity
from agent.settings import Settings, load_settings

if TYPE_CHECKING:
    from agent.link.pairing import PairResult

EXIT_OK, EXIT_FAILED = 0, 1


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the agent's state directory (default /var/lib/flow-agent as root or under"
        " systemd, else the user's data directory; env FLOW_AGENT_STATE_DIR)",
    )
    p.add_argument("--config", metavar="FILE", help="TOML settings file (env FLOW_AGENT_CONFIG)")


def _tls(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ca-file",
        metavar="FILE",
        help="PEM file of the CA that signs the control plane's certificate (default: system CAs)",
    )
    p.add_argument(
        "--allow-plaintext",
        action="store_const",
        const=True,
        default=None,
        help="allow http:// to a control plane that is not on loopback (insecure)",
    )


def add_parsers(sub: Any) -> None:
    """Register the daemon-side commands on ``flow-agent``'s subparsers."""
    p = sub.add_parser(
        "pair",
        help="pair this host with a tenant, using a one-time token",
        description="Pair this host with a tenant using a one-time token from the control"
        " plane. Prints the agent id, tenant and control-plane URL. A used, expired or"
        " malformed token exits 1 and says which. Prefer --token-file: a token on the"
        " command line is visible to other local users while the command runs.",
    )
    p.add_argument("token", nargs="?", metavar="TOKEN", help="the pairing token")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the token from FILE; the file is wiped after a successful pairing",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing identity (re-pairing after a revocation needs no --force)",
    )
    _common(p)
    _tls(p)
    p.set_defaults(handler=pair_cmd)

    p = sub.add_parser(
        "run",
        help="the daemon: connect to the control plane, sync flows, run them",
        description="Connect out to the paired control plane, sync published flows, run"
        " them and report their state. Pairs on first start from FLOW_AGENT_PAIRING_TOKEN or"
        " FLOW_AGENT_PAIRING_TOKEN_FILE. Runs until SIGTERM/SIGINT (a second one stops at once);"
        " SIGHUP reloads the configuration. Exit codes: 0 after a stop, 1 when it cannot start"
        " (the state directory in use by another flow-agent, the API's port taken, the control"
        " plane unreachable while pairing), 78 for a configuration or identity error"
        " (restarting cannot help), 70 for a crash. See docs/operations.md.",
    )
    _common(p)
    _tls(p)
    p.add_argument("--heartbeat", type=float, metavar="SECONDS", help="seconds between pings")
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="the least severe log lines written (default info; -v means debug)",
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        help="json lines, text, or auto: text on a terminal, else json (default auto)",
    )
    p.set_defaults(handler=run_cmd)

    p = sub.add_parser(
        "status",
        help="identity, connection state, flows, run counts, outbox depth",
        description="Show this agent's identity, link state, active flows, run counts and"
        " outbox depth. Works while the daemon runs.",
    )
    _common(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=status_cmd)

    p = sub.add_parser(
        "quickstart",
        help="the one-command demo: a control plane and an agent on loopback",
        description="Start a reference control plane and an agent on loopback, create a"
        " tenant, pair, publish the bundled example flows, run them and print what happened"
        " and the URLs to open.",
    )
    p.add_argument("--once", action="store_true", help="exit after the demo")
    p.set_defaults(handler=quickstart_cmd)


def _settings(args: argparse.Namespace, **flags: object) -> Settings:
    given: dict[str, object] = {"state_dir": args.state_dir, **flags}
    return load_settings(given, config=Path(args.config) if args.config else None)


def _token(args: argparse.Namespace) -> tuple[str, Path | None]:
    from agent.link.pairing import read_token_file
    from agent.link.pairing_env import token_from_env

    if args.token and args.token_file:
        raise UsageError("give the token or --token-file, not both")
    if args.token_file:
        path = Path(args.token_file)
        return read_token_file(path), path
    if args.token:
        return args.token, None
    text, source = token_from_env(os.environ)  # as a container's first start reads it
    if text:
        return text, source
    raise UsageError(
        "pair needs a TOKEN or --token-file FILE",
        hint="or FLOW_AGENT_PAIRING_TOKEN / FLOW_AGENT_PAIRING_TOKEN_FILE in the environment",
    )


@contextmanager
def _taken_back_on_failure(state_dir: Path) -> Iterator[None]:
    """A command that fails leaves the state directory as it found it.

    Only what it created goes: the store's files where there was no store,
    then the directories it made (when empty); never a file that was there.
    """
    from agent.store.files import DB_NAME, LOCK_NAME, SIDE_SUFFIXES

    try:
        made = [d for d in (state_dir, *state_dir.parents) if not d.exists()]
        had = set(os.listdir(state_dir)) if state_dir.is_dir() else set()
    except OSError as exc:
        raise OperationError(
            f"cannot read the state directory {state_dir}: {exc.strerror or exc}",
            hint="run as the agent's user, or choose another --state-dir",
        ) from None
    ours = [LOCK_NAME]
    if DB_NAME not in had:
        ours += [DB_NAME, *(DB_NAME + suffix for suffix in SIDE_SUFFIXES)]
    try:
        yield
    except StateDirLocked:
        raise  # another process owns the directory and all that is in it
    except BaseException:
        for name in ours:
            if name not in had:
                with suppress(OSError):
                    (state_dir / name).unlink()
        for directory in made:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty, or not ours to remove: the rest stays
        raise


def pair_cmd(args: argparse.Namespace) -> int:
    from agent.protocol.signing import parse_token

    settings = _settings(args, ca_file=args.ca_file, allow_plaintext=args.allow_plaintext)
    text, path = _token(args)
    parse_token(text)  # a malformed token is refused before any state is made
    with _taken_back_on_failure(settings.state_dir):
        result = _pair_in(settings, args, text, path)
    identity = result.identity
    print(f"agent id:      {identity.agent_id}")
    print(f"tenant:        {identity.tenant}")
    print(f"control plane: {identity.url} (region {identity.region})")
    print(f"state:         {settings.state_dir}")
    if result.previous is not None:
        retired = "revoked" if result.retired else "still valid until an admin revokes it"
        print(f"previous id:   {result.previous} ({retired})")
    return EXIT_OK


def _pair_in(
    settings: Settings, args: argparse.Namespace, text: str, path: Path | None
) -> PairResult:
    from agent.link.pairing import pair
    from agent.link.state import read_link_status
    from agent.store.sqlite import SqliteStore

    store = SqliteStore.open(settings.state_dir, synchronous=settings.sync)
    try:
        existing = load_identity(settings.state_dir)
        if existing is not None and not args.force:
            link = read_link_status(store)
            if not link.state.terminal:
                raise OperationError(
                    f"this state directory is already paired: agent {existing.agent_id} in"
                    f" tenant {existing.tenant} ({existing.url})",
                    hint="pass --force to replace that identity with a new one, or use"
                    " another --state-dir",
                )
        result = asyncio.run(
            pair(
                text,
                state_dir=settings.state_dir,
                store=store,
                ca_file=settings.ca_file,
                allow_plaintext=settings.allow_plaintext,
                token_file=path,
            )
        )
    finally:
        store.close()
    return result


def run_cmd(args: argparse.Namespace) -> int:
    """Exit 0 after a requested stop, 78 for configuration or identity errors, 70 for a crash."""

    def stop_early(signum: int, frame: object) -> None:
        # Nothing runs yet, so nothing to drain; the daemon's own handlers replace this.
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_early)
    from agent.daemon import EXIT_CRASH, run_daemon
    from agent.errors import AgentError, ConfigError

    def load() -> Settings:
        return _settings(
            args,
            ca_file=args.ca_file,
            allow_plaintext=args.allow_plaintext,
            heartbeat=args.heartbeat,
            log_level="debug" if args.verbose else args.log_level,
            log_format=args.log_format,
        )

    try:
        settings = load()
    except ConfigError:
        raise
    except AgentError as exc:  # a bad file, an unknown setting, a bad value: exit 78
        raise ConfigError(exc.message, hint=exc.hint) from exc
    _refuse_unpaired(settings)
    try:
        return asyncio.run(run_daemon(settings, reload_settings=load, manage_logging=True))
    except AgentError:
        raise
    except Exception as exc:
        # A bug: the whole story goes to the log, one line to whoever watches stderr.
        logging.getLogger("flow_agent.daemon").critical("the agent crashed", exc_info=True)
        print(
            f"flow-agent: the agent crashed ({type(exc).__name__}); its log has the details",
            file=sys.stderr,
        )
        return EXIT_CRASH


def _refuse_unpaired(settings: Settings) -> None:
    """No identity and no token to pair with: exit 78 before any state is made.

    In the daemon's order: an unreadable CA file is said first, as it would.
    """
    from agent.errors import AgentError, ConfigError
    from agent.identity import IDENTITY_FILE
    from agent.link.transport import ssl_context

    if (settings.state_dir / IDENTITY_FILE).exists() or any(
        os.environ.get(name)
        for name in ("FLOW_AGENT_PAIRING_TOKEN", "FLOW_AGENT_PAIRING_TOKEN_FILE")
    ):
        return
    if settings.ca_file is not None:
        try:
            ssl_context(settings.ca_file)
        except AgentError as exc:
            raise ConfigError(exc.message, hint=exc.hint) from exc
    raise ConfigError(
        f"this agent is not paired ({settings.state_dir} holds no identity)",
        hint="run `flow-agent pair TOKEN` first, or set FLOW_AGENT_PAIRING_TOKEN"
        " (or FLOW_AGENT_PAIRING_TOKEN_FILE) for the first start",
    )


def status_cmd(args: argparse.Namespace) -> int:
    from agent.daemon_state import lifecycle_json, lifecycle_text, read_lifecycle
    from agent.link.status import format_status, read_status, status_json

    settings = _settings(args)
    if not settings.state_dir.exists():
        raise OperationError(
            f"{settings.state_dir} does not exist: this agent was never paired or run here",
            hint="pass --state-dir, or pair first: flow-agent pair TOKEN",
        )
    status = read_status(settings.state_dir)
    # The daemon's lifecycle (starting, ready, draining), when one runs.
    lifecycle = read_lifecycle(settings.state_dir) if status.daemon_pid is not None else None
    if args.json:
        doc = json.loads(status_json(status))
        doc["lifecycle"] = lifecycle_json(lifecycle)
        print(json.dumps(doc, indent=2))
    else:
        lines = format_status(status)
        if lifecycle is not None:
            lines.insert(
                lines.index(next(x for x in lines if x.startswith("daemon:"))) + 1,
                "lifecycle:       " + lifecycle_text(lifecycle),
            )
        for line in lines:
            print(line)
    return EXIT_OK if status.identity is not None else EXIT_FAILED


def quickstart_cmd(args: argparse.Namespace) -> int:
    from agent.link.quickstart import quickstart

    def say(line: str) -> None:
        print(line, flush=True)

    code = asyncio.run(quickstart(once=args.once, say=say))
    if code:
        print("flow-agent: quickstart: a demo run did not go as expected", file=sys.stderr)
    return code


__all__ = ["add_parsers", "pair_cmd", "quickstart_cmd", "run_cmd", "status_cmd"]
