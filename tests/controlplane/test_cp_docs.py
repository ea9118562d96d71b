"""docs/controlplane.md cannot fall behind the routes and the command line."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import controlplane
from controlplane.cli import build_parser
from controlplane.openapi import openapi_document

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
