"""``flow-agent api-token [--rotate]``: the local API's bearer token (docs/api.md).

Prints the token, and nothing else, on stdout, so that a script can take it
(``TOKEN=$(flow-agent api-token)``).  The first call creates it; from the
next start the agent requires it, on loopback too.  ``--rotate`` replaces
it: a running agent notices within a second, and the old token stops working.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.settings import load_settings

from .auth import load_or_create_token, read_token_file, rotate_token
from .serve import token_path


def add_parser(sub: Any) -> None:
    """Register ``api-token`` on ``flow-agent``'s subparsers."""
    p = sub.add_parser(
        "api-token",
        help="show (creating it) or rotate the local API's bearer token",
        description="Print the local API's bearer token on stdout, creating it on first use"
        " (STATE_DIR/api.token, or api_token_file). The agent requires it from its next"
        " start, and always when the API listens beyond loopback. --rotate replaces it; a"
        " running agent takes the new one within a second.",
    )
    p.add_argument(
        "--rotate", action="store_true", help="replace the token with a new one and print it"
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the agent's state directory (env FLOW_AGENT_STATE_DIR)",
    )
    p.add_argument("--config", metavar="FILE", help="TOML settings file (env FLOW_AGENT_CONFIG)")
    p.set_defaults(handler=api_token_cmd)


def api_token_cmd(args: argparse.Namespace) -> int:
    settings = load_settings(
        {"state_dir": args.state_dir}, config=Path(args.config) if args.config else None
    )
    path = token_path(settings)
    if args.rotate:
        token = rotate_token(settings.state_dir, path=path)
    elif settings.api_token_file is not None:
        token = read_token_file(path)  # someone else's file: never create it here
    else:
        token = load_or_create_token(settings.state_dir)
    print(token)
    return 0


__all__ = ["add_parser", "api_token_cmd"]
