"""docs/controlplane.md cannot fall behind the routes and the command line."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import controlplane
from agent import identity, secrets
from agent.api import auth
from agent.runtime import callbacks
from agent.store import files
from controlplane.cli import build_parser
from controlplane.openapi import openapi_document
from tests.support.agent import AgentUnderTest
from tests.support.fixtures import agent, cp

__all__ = ["agent", "cp"]  # fixtures of the paired agent and its control plane

DOC = Path(controlplane.__file__).parent.parent / "docs" / "controlplane.md"


def test_every_admin_route_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for path, operations in openapi_document()["paths"].items():
        for method in operations:
            assert f"`{method.upper()} {path}" in text, f"{method.upper()} {path}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_and_flag_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, sub in _subparsers(build_parser()).items():
        nested = _subparsers(sub)
        for leaf_name, leaf in nested.items() if nested else [("", sub)]:
            command = f"flow-controlplane {name} {leaf_name}".strip()
            assert command in text, command
            for action in leaf._actions:
                for flag in action.option_strings:
                    if flag.startswith("--") and flag != "--help":
                        assert f"`{flag}" in text or f" {flag} " in text, (command, flag)


# A path under examples/ named in a doc, up to the first character that cannot
# be part of it (a space, a backtick, a closing parenthesis or quote).
_EXAMPLE_PATH = re.compile(r"(?<![\w/.-])examples/[\w./-]*[\w/]")


def test_every_example_path_named_in_the_docs_exists() -> None:
    root = DOC.parent.parent
    named: list[tuple[str, str]] = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for match in _EXAMPLE_PATH.finditer(doc.read_text(encoding="utf-8")):
            named.append((doc.name, match.group()))
    assert ("controlplane.md", "examples/hello.json") in named
    missing = [(doc, path) for doc, path in named if not (root / path).exists()]
    assert not missing, missing


# -- the agent's state directory (docs/pairing.md, "What is stored where") ------


def _state_files_table() -> list[str]:
    text = (DOC.parent / "pairing.md").read_text(encoding="utf-8")
    start = text.index("| file | mode | holds |")
    rows = text[start:].split("\n\n", 1)[0].splitlines()[2:]
    return [row.split("|")[1] for row in rows]


def _documented(name: str, cells: list[str]) -> bool:
    for cell in cells:
        for pattern in re.findall(r"`([^`]+)`", cell):
            # STAMP and NAME stand for any text; "…" for any run of characters.
            regex = re.escape(pattern).replace("STAMP", ".+").replace("NAME", ".+")
            if re.fullmatch(regex.replace("…", ".*"), name):
                return True
        if name.startswith("state.db.corrupt-") and "corrupt" in cell:
            return True  # the moved-aside companions keep their -wal/-shm suffixes
    return False


def test_every_file_the_agent_names_in_its_state_dir_is_in_the_table() -> None:
    cells = _state_files_table()
    names = [
        identity.KEY_FILE,
        identity.NEXT_KEY_FILE,
        identity.IDENTITY_FILE,
        secrets.KEY_FILE,
        secrets.SEALING_KEY_FILE,
        callbacks.CALLBACK_KEY_FILE,
        auth.TOKEN_FILE,
        files.DB_NAME,
        files.LOCK_NAME,
        *(files.DB_NAME + suffix for suffix in files.SIDE_SUFFIXES),
        f".{identity.IDENTITY_FILE}.123.tmp",
    ]
    missing = [name for name in names if not _documented(name, cells)]
    assert not missing, missing
    assert not _documented("unheard-of.bin", cells)


async def test_a_running_paired_agent_writes_only_documented_files(
    agent: AgentUnderTest,
) -> None:
    await agent.start()
    auth.rotate_token(agent.settings.state_dir)
    written = sorted(p.name for p in agent.settings.state_dir.iterdir())
    assert {"agent.key", "identity.json", "sealing.key", "state.db", "api.token"} <= set(written)
    cells = _state_files_table()
    assert [name for name in written if not _documented(name, cells)] == []
