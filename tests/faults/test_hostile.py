"""Case 31: hostile flows: injection, traversal, endless loops, fan-out and size bombs."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.connectors.registry import default_registry
from agent.flow.model import FlowInvalid, parse_flow
from agent.link.dispatch import TimedCatalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore

from .conftest import Record
from .harness import ROOT, agent_env

BUDGET = 10.0  # seconds any one hostile flow may take to be refused or stopped
OUT = {"v": {"type": "string", "access": "output", "default": ""}}


def _set(to: Any) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "hostile",
        "values": OUT,
        "start": "s",
        "elements": {
            "s": {"type": "operator", "operations": [{"set": "v", "to": to}], "next": "done"},
            "done": {"type": "end"},
        },
    }


def _loop() -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "hostile",
        "start": "a",
        "elements": {
            "a": {"type": "decision", "outcomes": [{"next": "b"}]},
            "b": {"type": "decision", "outcomes": [{"next": "a"}]},
        },
    }


def _recursive() -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "hostile",
        "start": "again",
        "elements": {
            "again": {"type": "subflow", "flow": "hostile", "next": "done"},
            "done": {"type": "end"},
        },
    }


def _fan_out() -> dict[str, Any]:
    """A loop that starts a child run on every turn."""
    return {
        "format": "flow/v1",
        "id": "hostile",
        "values": {"n": {"type": "number", "access": "output", "default": 0}},
        "start": "child",
        "elements": {
            "child": {"type": "subflow", "flow": "leaf", "next": "count"},
            "count": {"type": "operator", "operations": [{"add": "n", "by": 1}], "next": "child"},
        },
    }


LEAF = {"format": "flow/v1", "id": "leaf", "start": "done", "elements": {"done": {"type": "end"}}}

# name: (document, a word the error must contain).  Each is stopped either when the
# flow is parsed (an unknown name, an invalid id) or when the run renders it (the
# sandbox, the limits); both are refusals.
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "mro escape": (_set("{{ ''.__class__.__mro__[1].__subclasses__() }}"), "__class__"),
    "globals escape": (_set("{{ cycler.__init__.__globals__.os.system('id') }}"), "cycler"),
    "lipsum globals": (_set("{{ lipsum.__globals__ }}"), "lipsum"),
    "self context": (_set("{{ self._TemplateReference__context }}"), "not allowed"),
    "format string": (_set("{{ '{0.__class__}'.format(v) }}"), "__class__"),
    "expr attribute": (_set({"expr": "v.__class__.__base__"}), "__class__"),
    "flow id traversal": ({**LEAF, "id": "../../etc/passwd"}, "not a valid flow id"),
    "subflow traversal": (
        {
            **_recursive(),
            "elements": {
                "again": {"type": "subflow", "flow": "../secrets", "next": "done"},
                "done": {"type": "end"},
            },
        },
        "not a valid flow id",
    ),
    "endless loop": (_loop(), "more than 10000 elements"),
    "recursive subflow": (_recursive(), "nested more than"),
    "fan-out": (_fan_out(), "more than 10000 elements"),
    "string bomb": (_set("{{ 'a' * 1000000000 }}"), "not allowed"),
    "power bomb": (_set("{{ (9 ** 999) ** 999 }}"), "not allowed"),
    "range bomb": (_set("{% for i in range(1000000000) %}{{ i }}{% endfor %}"), "range"),
    "nested loops": (
        _set(
            "{% for i in range(100000) %}{% for j in range(100000) %}"
            "{{ '' }}{% endfor %}{% endfor %}"
        ),
        "not allowed",
    ),
    "output bomb": (
        _set("{% for i in range(90000) %}{{ 'xxxxxxxxxxxxxxxx' }}{% endfor %}"),
        "more than",
    ),
}


async def _attempt(doc: dict[str, Any], state: Path) -> tuple[str, str]:
    try:
        flow = parse_flow(doc)
    except FlowInvalid as exc:
        return "parse", "; ".join(i.message for i in exc.issues)
    store = SqliteStore.open(state, synchronous="off")
    registry = default_registry()
    try:
        catalog = TimedCatalog(store, local=[flow, parse_flow(LEAF)])
        runner = Runner(store=store, catalog=catalog, connectors=registry)
        result = await runner.start("hostile", {})
    finally:
        await registry.close_all()
        store.close()
    error = result.get("error") or {}
    return ("run" if result["status"] == "failed" else result["status"]), str(error.get("message"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_31_hostile_flow(name: str, tmp_path: Path, record: Record) -> None:
    """Case 31. Each hostile flow is refused when parsed, or its run fails.

    Pass: nothing of it executes (no sandbox escape, no file outside the
    flow ids), and it is stopped within the budget (10 s) with a clear error
    naming what was refused: expression injection, path traversal, an
    endless loop (max_steps), recursion and fan-out (subflow depth, steps),
    size bombs (the expression limits).
    """
    doc, word = CASES[name]
    started = time.monotonic()
    phase, message = asyncio.run(_attempt(doc, tmp_path / "state"))
    took = time.monotonic() - started
    assert phase in ("parse", "run"), (name, phase, message)
    assert word.lower() in message.lower(), (name, message)
    assert "uid=" not in message and "<class" not in message  # nothing leaked out of it
    assert took < BUDGET, f"{name} took {took:.1f} s"
    record(31, hostile=name, stopped_at=phase, seconds=round(took, 2), error=message[:90])


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit caps the address space")
def test_31_bombs_under_a_hard_memory_cap(tmp_path: Path) -> None:
    """Case 31, the process: size bombs through ``flow-agent exec`` with 1 GiB of address space.

    Pass: the run fails with the sandbox's clear error (exit 1), no
    MemoryError, no traceback: the limits act before anything is allocated.
    """
    for name in ("string bomb", "range bomb", "nested loops"):
        flow = tmp_path / f"{name.replace(' ', '-')}.json"
        flow.write_text(json.dumps(CASES[name][0]))
        done = subprocess.run(
            [
                "prlimit",
                "--as=1073741824",
                sys.executable,
                "-m",
                "agent.cli",
                "exec",
                str(flow),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=agent_env(),
        )
        assert done.returncode == 1, (name, done.stderr[-500:])
        assert json.loads(done.stdout)["status"] == "failed"
        assert "MemoryError" not in done.stderr and "Traceback" not in done.stderr
