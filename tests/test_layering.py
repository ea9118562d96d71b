"""Imports point inward: the pure cores agent/flow/ and agent/protocol/ do no I/O.

Every import statement of every module is read with ``ast`` (those inside
functions too, and relative ones resolved), so a lazy ``import asyncio`` in a
helper is caught as well as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agent

AGENT = Path(agent.__file__).parent
CORES = ("flow", "protocol")
FORBIDDEN = frozenset(
    {
        "asyncio",
        "aiohttp",
        "websockets",
        "sqlite3",
        "sqlite_utils",
        "socket",
        "subprocess",
        "threading",
    }
)
ALLOWED_AGENT = ("agent.flow", "agent.protocol", "agent.errors")


def imports_of(source: str, *, package: str) -> set[str]:
    """Absolute names of every module ``source`` imports (``from . import x`` resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                if node.module:
                    found.add(f"{prefix}.{node.module}")
                else:
                    found.update(f"{prefix}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


def allowed(name: str) -> bool:
    top = name.split(".")[0]
    if top in FORBIDDEN:
        return False
    if top != "agent":
        return True
    return any(name == inner or name.startswith(inner + ".") for inner in ALLOWED_AGENT)


def violations(modules: set[str]) -> list[str]:
    return [name for name in sorted(modules) if not allowed(name)]


def core_modules() -> list[Path]:
    return sorted(path for core in CORES for path in (AGENT / core).rglob("*.py"))


def test_the_cores_are_found() -> None:
    files = core_modules()
    assert len([f for f in files if f.parent.name == "flow"]) >= 10
    assert len([f for f in files if f.parent.name == "protocol"]) >= 5


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_module_imports_no_adapter(path: Path) -> None:
    package = ".".join(path.relative_to(AGENT.parent).with_suffix("").parts[:-1])
    modules = imports_of(path.read_text(encoding="utf-8"), package=package)
    assert violations(modules) == [], f"{path.name} imports {violations(modules)}"


def test_the_check_catches_what_it_should() -> None:
    source = """
import json
from . import values
from .engine import Engine
from .. import errors
from ..runtime import runner

def later():
    import asyncio.events
    from sqlite_utils import Database
"""
    modules = imports_of(source, package="agent.flow")
    assert {"agent.flow.values", "agent.flow.engine", "agent.errors"} <= modules
    assert violations(modules) == ["agent.runtime", "asyncio.events", "sqlite_utils"]
