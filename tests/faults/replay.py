"""Replay fixtures (case 11): executions recorded by one release, resumed by the next.

``python -m tests.faults.replay`` records ``fixtures/replay-<version>.sql``
(a dump of a state database holding runs stopped at every kind of point: a
page, a due timer, a connector call in flight when the process died, a
subflow waiting on its child, a finished run) and ``replay-<version>.json``
(how each run ends when driven on without a stop, on that release).  Commit
both with each release; the test resumes every older recording on the code
of today and demands the same outcomes.

Connector calls go to ``PLACEHOLDER``, replaced by the test's sink.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.connectors.base import ConnectorRequest, ConnectorResult
from agent.connectors.registry import ConnectorRegistry, default_registry
from agent.flow.commands import Answer
from agent.flow.model import canonical_json, parse_flow
from agent.link.dispatch import TimedCatalog
from agent.link.outbox import Outbox, OutboxObserver
from agent.runtime.runner import Runner
from agent.store.base import FlowRecord
from agent.store.sqlite import SqliteStore

FIXTURES = Path(__file__).with_name("fixtures")
PLACEHOLDER = "http://127.0.0.1:9"
CLOCK = 1_800_000_000.0

_VALUES = {
    "note": {"type": "string", "access": "output", "default": ""},
    "n": {"type": "number", "access": "input", "default": 1},
}

FLOWS: list[dict[str, Any]] = [
    {
        "format": "flow/v1",
        "id": "approve",
        "version": 1,
        "values": _VALUES,
        "start": "ask",
        "elements": {
            "ask": {
                "type": "page",
                "title": "n = {{ n }}",
                "fields": [{"value": "note", "label": "Note"}],
                "outcomes": [{"id": "ok", "next": "done"}, {"id": "no", "next": "refuse"}],
            },
            "done": {"type": "end"},
            "refuse": {"type": "end", "status": "failed", "message": "refused: {{ note }}"},
        },
    },
    {
        "format": "flow/v1",
        "id": "later",
        "version": 1,
        "values": _VALUES,
        "start": "nap",
        "elements": {
            "nap": {"type": "wait", "seconds": 3600, "next": "twice"},
            "twice": {
                "type": "operator",
                "operations": [
                    {"multiply": "n", "by": 2},
                    {"set": "note", "to": "woke with {{ n }}"},
                ],
                "next": "done",
            },
            "done": {"type": "end"},
        },
    },
    {
        "format": "flow/v1",
        "id": "call",
        "version": 1,
        "values": {**_VALUES, "ticket": {"type": "string", "access": "output"}},
        "connectors": {"erp": {"type": "http", "base_url": PLACEHOLDER}},
        "start": "post",
        "elements": {
            "post": {
                "type": "message",
                "connector": "erp",
                "action": "POST /tickets",
                "body": {"n": {"ref": "n"}},
                "outputs": {"ticket": "body.id"},
                "next": "done",
            },
            "done": {"type": "end"},
        },
    },
    {
        "format": "flow/v1",
        "id": "parent",
        "version": 1,
        "values": {**_VALUES, "child_note": {"type": "string", "access": "output"}},
        "start": "sub",
        "elements": {
            "sub": {
                "type": "subflow",
                "flow": "approve",
                "inputs": {"n": {"ref": "n"}},
                "outputs": {"child_note": "note"},
                "next": "done",
            },
            "done": {"type": "end"},
        },
    },
]

# (run id, flow, inputs, how it is driven on after the stop)
RUNS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("page-ok", "approve", {"n": 3}, {"answer": {"outcome": "ok", "fields": {"note": "fine"}}}),
    ("page-no", "approve", {"n": 4}, {"answer": {"outcome": "no", "fields": {"note": "late"}}}),
    ("timer", "later", {"n": 21}, {"wake": True}),
    ("call", "call", {"n": 5}, {"wake": True}),
    ("nested", "parent", {"n": 6}, {"answer": {"outcome": "ok", "fields": {"note": "deep"}}}),
    ("finished", "approve", {"n": 1}, {}),
]


class _Hang:
    """A connector whose call never returns: the process "dies" during it."""

    async def call(self, request: ConnectorRequest) -> ConnectorResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


def runner(store: SqliteStore, registry: Any, clock: Callable[[], float]) -> Runner:
    observer = OutboxObserver(Outbox(store), clock=clock)
    catalog = TimedCatalog(store, clock=clock)
    return Runner(store=store, catalog=catalog, connectors=registry, observer=observer, clock=clock)


def store_flows(store: SqliteStore) -> None:
    for doc in FLOWS:
        flow = parse_flow(doc)
        store.put_flow(
            FlowRecord(
                flow_id=flow.id,
                version=flow.version,
                definition=canonical_json(flow.definition),
                sha256=flow.sha256,
                active=True,
                signature=None,
                received_at=CLOCK,
            )
        )


async def drive_on(run: Runner, run_id: str, how: dict[str, Any]) -> dict[str, Any]:
    """Drive a stopped run on, as the agent would after a restart."""
    if "answer" in how:
        return await run.resume(run_id, answer=Answer(state_token=None, **how["answer"]))
    if how.get("wake"):
        await run.wake(run_id)
    return await run.result_of(run_id)


def outcome(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("status", "outputs", "path", "error")}


async def _record(state: Path, sink_url: str) -> dict[str, Any]:
    now = [CLOCK]
    store = SqliteStore.open(state, synchronous="full", clock=lambda: now[0])
    store_flows(store)
    hang = ConnectorRegistry()
    hang.register("http", _Hang())  # type: ignore[arg-type]
    first = runner(store, hang, lambda: now[0])
    for run_id, flow, inputs, _ in RUNS:
        task = asyncio.ensure_future(first.start(flow, inputs, run_id=run_id))
        await asyncio.sleep(0.05)
        if not task.done():
            task.cancel()  # the process died inside the connector call
        await asyncio.gather(task, return_exceptions=True)
    await first.resume("finished", answer=Answer(outcome="ok", fields={}, state_token=None))
    store.close()
    return {}


def main() -> int:  # pragma: no cover - run by hand at a release
    import shutil
    import tempfile

    FIXTURES.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp())
    try:
        asyncio.run(_record(work / "state", PLACEHOLDER))
        conn = sqlite3.connect(work / "state" / "state.db")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        dump = (
            f"-- flow-agent {__version__}, schema {version}\n"
            f"PRAGMA user_version = {version};\n" + "\n".join(conn.iterdump()) + "\n"
        )
        conn.close()
        # The expected outcomes: the same runs driven on, on this release.
        expected = asyncio.run(expected_outcomes(dump, version, work / "expect"))
    finally:
        shutil.rmtree(work)
    (FIXTURES / f"replay-{__version__}.sql").write_text(dump)
    (FIXTURES / f"replay-{__version__}.json").write_text(json.dumps(expected, indent=1) + "\n")
    return 0


def load(dump: str, state: Path, sink_url: str) -> None:
    """A state directory holding the recorded database, connector calls sent to ``sink_url``."""
    state.mkdir(parents=True, mode=0o700)
    conn = sqlite3.connect(state / "state.db")
    conn.executescript(dump.replace(PLACEHOLDER, sink_url))
    conn.close()


async def replay(dump: str, state: Path, sink_url: str) -> dict[str, Any]:
    load(dump, state, sink_url)
    now = [CLOCK + 7200]
    store = SqliteStore.open(state, clock=lambda: now[0])
    registry = default_registry()
    try:
        run = runner(store, registry, lambda: now[0])
        found: dict[str, Any] = {}
        for run_id, _, _, how in RUNS:
            found[run_id] = outcome(await drive_on(run, run_id, how))
        return found
    finally:
        await registry.close_all()
        store.close()


async def expected_outcomes(dump: str, version: int, state: Path) -> dict[str, Any]:
    from .harness import LoopThread, Sink

    loop = LoopThread().start()
    sink = Sink().start(loop)
    try:
        return {"schema": version, "runs": await replay(dump, state, sink.url)}
    finally:
        sink.stop()
        loop.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
