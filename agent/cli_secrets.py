"""``flow-agent secret set|list|rm``: the encrypted secret store of a state directory.

A value is read from standard input, never from the command line (argv is
visible to every local user in ``ps``); on a terminal it is asked for
without echo.  Nothing here ever prints a value.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from agent.errors import OperationError, UsageError
from agent.secrets import MAX_VALUE_BYTES, SecretStore, check_name
from agent.store.sqlite import SqliteStore

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(sub: Any) -> None:
    """Wire ``secret`` and its three commands into the top-level parser."""
    p = sub.add_parser(
        "secret",
        help="manage the encrypted secret store",
        description="Set, list and remove secrets of the agent's secret store, encrypted at "
        "rest with AES-GCM under STATE_DIR/secrets.key (or --key-file). Values are read from "
        "standard input and never printed.",
    )
    inner = p.add_subparsers(dest="secret_command", metavar="COMMAND", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--state-dir",
            metavar="DIR",
            help="the agent's state directory "
            "(default: FLOW_AGENT_STATE_DIR, else the agent's default)",
        )
        q.add_argument(
            "--key-file",
            metavar="FILE",
            help="the 32-byte key (raw or base64) instead of STATE_DIR/secrets.key",
        )

    q = inner.add_parser(
        "set",
        help="store a secret; the value is read from stdin",
        description="Store (or replace) secret NAME. The value is read from "
        "standard input (one trailing newline removed); on a terminal it is "
        "asked for without echo. Never pass a value as an argument.",
    )
    q.add_argument("name", metavar="NAME")
    common(q)
    q.set_defaults(handler=set_)

    q = inner.add_parser(
        "list",
        help="list the names of stored secrets",
        description="List secret names (never values), one per line.",
    )
    q.add_argument(
        "--json", action="store_true", help="print a JSON list of {name, created_at, updated_at}"
    )
    common(q)
    q.set_defaults(handler=list_)

    q = inner.add_parser("rm", help="remove a secret", description="Remove secret NAME.")
    q.add_argument("name", metavar="NAME")
    common(q)
    q.set_defaults(handler=rm)


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    import os

    if os.environ.get("FLOW_AGENT_STATE_DIR"):
        return Path(os.environ["FLOW_AGENT_STATE_DIR"])
    from agent.settings import default_state_dir

    return default_state_dir()


@contextmanager
def _open(args: argparse.Namespace, *, create: bool) -> Iterator[SecretStore]:
    state_dir = _state_dir(args)
    if not create and not (state_dir / "state.db").exists():
        raise UsageError(f"{state_dir} holds no flow-agent state (no state.db)")
    store = SqliteStore.open(state_dir)
    try:
        key_file = Path(args.key_file) if args.key_file else None
        with SecretStore.for_store(store, key_file=key_file) as secrets:
            yield secrets
    finally:
        store.close()


def read_value(stream: TextIO, *, name: str) -> str:
    """The value from ``stream``: asked without echo on a terminal, else read whole."""
    if stream.isatty():
        value = getpass.getpass(f"value of secret {name}: ")
        if value != getpass.getpass(f"value of secret {name} (again): "):
            raise UsageError("the two values differ; nothing was stored")
    else:
        value = stream.read(MAX_VALUE_BYTES + 3)
        # One line ending, as `echo` or a file adds; anything else is the value.
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value:
        raise UsageError(
            "no value on standard input; nothing was stored",
            hint="pipe the value in: printf '%s' \"$VALUE\" | flow-agent secret set NAME",
        )
    return value


def set_(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    value = read_value(sys.stdin, name=name)
    with _open(args, create=True) as secrets:
        secrets.set(name, value)
    print(f"stored secret {name}")
    return EXIT_OK


def list_(args: argparse.Namespace) -> int:
    with _open(args, create=False) as secrets:
        info = secrets.info()
    if args.json:
        listed = [{"name": n, "created_at": _iso(c), "updated_at": _iso(u)} for n, c, u in info]
        print(json.dumps(listed, indent=2))
        return EXIT_OK
    for name, _, _ in info:
        print(name)
    return EXIT_OK


def rm(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    with _open(args, create=False) as secrets:
        removed = secrets.remove(name)
    if not removed:
        raise OperationError(f"no secret {name} in the secret store")
    print(f"removed secret {name}")
    return EXIT_OK


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
