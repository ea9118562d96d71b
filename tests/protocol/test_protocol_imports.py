"""agent/protocol/ stays sans-I/O: no event loop, no sockets, no adapter library."""

from __future__ import annotations

import ast
from pathlib import Path

import agent.protocol

FORBIDDEN = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "aiohttp",
    "websockets",
    "sqlite3",
    "sqlite_utils",
    "threading",
    "subprocess",
    "http",
    "urllib.request",
    "requests",
    "httpx",
    "trio",
    "anyio",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_protocol_imports_no_io() -> None:
    package = Path(agent.protocol.__file__).parent
    files = sorted(package.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            assert module not in FORBIDDEN and top not in FORBIDDEN, f"{path.name} imports {module}"
