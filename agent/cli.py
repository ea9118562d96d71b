"""The ``flow-agent`` command line (spec/cli.md).

Exit codes: 0 success, 1 the operation failed, 2 usage error, 141 when
whoever read stdout went away (``flow-agent ... | head``), as for a process
killed by SIGPIPE.  Errors go to stderr as lines a person can act on; a
traceback never reaches the user.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from agent import __version__
from agent.errors import AgentError, UsageError

EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE: what a shell shows for a writer cut off


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


Handler = Callable[[argparse.Namespace], int]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _exec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flows", metavar="DIR", help="directory of other flow files (subflows), found by their id"
    )
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set the secret-store entry NAME for this command only (never printed)",
    )
    p.add_argument(
        "--max-wait",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="sleep through timers due within this many seconds (default 30)",
    )
    p.add_argument("--json", action="store_true", help="print the run result as JSON")
    p.add_argument(
        "--sync",
        choices=("off", "normal", "full", "extra"),
        default="normal",
        help="the store's fsync level (default normal; see the README, Durability)",
    )
    p.add_argument(
        "--http-allow-network",
        action="append",
        metavar="CIDR",
        help="a network connectors may reach although a denied one holds it (repeatable;"
        " setting http_allow_networks)",
    )
    p.add_argument(
        "--http-deny-network",
        action="append",
        metavar="CIDR",
        help="a network connectors must not reach; 'private' means loopback and the private"
        " ranges (repeatable; setting http_deny_networks)",
    )
    p.add_argument(
        "--http-max-response-bytes",
        type=int,
        metavar="BYTES",
        help="largest connector response read (setting http_max_response_bytes, default 10 MiB)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file whose connector settings apply (as for 'flow-agent run')",
    )
    p.add_argument(
        "--secrets-key-file",
        metavar="FILE",
        help="the secret store's key (default STATE_DIR/secrets.key; see 'flow-agent secret')",
    )


def build_parser() -> argparse.ArgumentParser:
    from agent import cli_local

    parser = _Parser(prog="flow-agent", description="Self-hosted runtime agent for flow/v1 flows.")
    parser.add_argument("--version", action="version", version=f"flow-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "validate",
        help="check flow/v1 files",
        description="Check flow/v1 files: prints 'FILE: ok' or one "
        "'FILE: PATH: MESSAGE' line per problem; exits 1 if any is invalid.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(handler=cli_local.validate)

    p = sub.add_parser(
        "exec",
        help="run a flow locally, without a control plane",
        description="Run a flow locally until it completes, fails or waits for "
        "a person (or for a timer longer than --max-wait). Exit 0 completed or "
        "waiting, 1 failed or cancelled, 2 invalid flow or inputs.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input value, converted to its declared type",
    )
    p.add_argument("--inputs", metavar="JSON", help="inputs as one JSON object")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the run's state here (default: a temporary directory, removed afterwards)",
    )
    _exec_flags(p)
    p.set_defaults(handler=cli_local.exec_)

    p = sub.add_parser(
        "resume",
        help="continue a run in a new process",
        description="With --outcome, answer the page/step the run waits on; "
        "without, continue a run that was interrupted or waits on a timer.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        required=True,
        help="the state directory that keeps the run",
    )
    p.add_argument("--outcome", metavar="ID", help="the outcome (button) to choose")
    p.add_argument(
        "--field", action="append", default=[], metavar="NAME=VALUE", help="a page field value"
    )
    p.add_argument(
        "--state-token",
        metavar="TOKEN",
        help="the state token the page was shown with; a stale one is refused",
    )
    _exec_flags(p)
    p.set_defaults(handler=cli_local.resume)

    p = sub.add_parser(
        "runs",
        help="list top-level runs in a state directory",
        description="List top-level runs, newest first. Reads without taking the state"
        " directory's lock, so it works while the daemon runs.",
    )
    p.add_argument("--state-dir", metavar="DIR", required=True, help="the state directory to list")
    p.add_argument("--status", choices=("running", "waiting", "completed", "failed", "cancelled"))
    p.add_argument("--json", action="store_true", help="print a list of run results")
    p.set_defaults(handler=cli_local.runs)

    from agent import cli_daemon

    cli_daemon.add_parsers(sub)

    from agent import cli_secrets

    cli_secrets.add_parser(sub)

    from agent import cli_ops

    cli_ops.add_parsers(sub)

    from agent.api import cli as cli_api

    cli_api.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if args.command != "secret":
            from agent.connectors.plugins import discover_plugins

            # Plugin connector types must be known before any flow is parsed.
            discover_plugins()
        handler: Handler = args.handler
        code = handler(args)
        # A reader that went away shows here, not in a flush at interpreter exit.
        sys.stdout.flush()
        return code
    except AgentError as exc:
        for line in str(exc).splitlines():
            print(
                f"flow-agent: {line}" if not line.startswith("flow-agent") else line,
                file=sys.stderr,
            )
        return exc.exit_code
    except KeyboardInterrupt:
        print("flow-agent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE


def _drop_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's last flush would fail on the pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):
        pass  # stdout is no file (a test's capture): nothing will flush into a pipe


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
