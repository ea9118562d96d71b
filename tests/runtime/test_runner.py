"""The runner against a real SQLite store and real connectors."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.connectors.registry import ConnectorRegistry
from agent.flow.commands import Answer
from agent.flow.engine import AnswerRefused, InputInvalid, Visit
from agent.runtime.runner import RunNotFound, new_run_id
from agent.store.sqlite import SqliteStore

from .conftest import Clock, make_runner
from .flows import CHILD, PAGE, PAGE_PARENT, PARENT, RECURSIVE, TIMER, flow


async def test_a_pure_flow_completes_and_is_stored(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    runner = make_runner(store, registry, clock, CHILD)
    result = await runner.start("child", {"n": "4"})
    assert result["status"] == "completed"
    assert result["outputs"] == {"doubled": 8}
    assert set(result) == {
        "run_id",
        "flow",
        "version",
        "status",
        "outputs",
        "path",
        "waiting",
        "error",
    }
    record = store.get_run(result["run_id"])
    assert record is not None and record.status == "completed"


async def test_invalid_inputs_store_nothing(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    runner = make_runner(store, registry, clock, CHILD)
    with pytest.raises(InputInvalid, match="input 'n'"):
        await runner.start("child", {"n": "four"})
    assert store.list_runs() == []


async def test_page_answer_and_refusals_leave_the_run_unchanged(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    runner = make_runner(store, registry, clock, PAGE)
    started = await runner.start("approve", {})
    waiting = started["waiting"]
    assert waiting["kind"] == "input" and waiting["title"] == "Approve 10?"
    run_id = started["run_id"]
    before = store.get_run(run_id)
    for answer, code in [
        (Answer(outcome="maybe"), "unknown_outcome"),
        (Answer(outcome="yes", fields={"note": "x"}, state_token="stale"), "stale_token"),
        (Answer(outcome="yes"), "missing_field"),
        (Answer(outcome="yes", fields={"amount": 5}), "unknown_field"),
    ]:
        with pytest.raises(AnswerRefused) as refused:
            await runner.resume(run_id, answer=answer)
        assert refused.value.code == code
        assert store.get_run(run_id) == before
    done = await runner.resume(
        run_id,
        answer=Answer(outcome="yes", fields={"note": "fine"}, state_token=waiting["state_token"]),
    )
    assert done["status"] == "completed"
    assert done["outputs"] == {"note": "fine", "approved": True}


async def test_failed_end_reports_its_message(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    runner = make_runner(store, registry, clock, PAGE)
    started = await runner.start("approve", {})
    done = await runner.resume(
        started["run_id"], answer=Answer(outcome="no", fields={"note": "too much"})
    )
    assert done["status"] == "failed"
    assert done["error"] == {"element": "ko", "message": "rejected: too much"}


async def test_subflow_outputs_flow_back(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    runner = make_runner(store, registry, clock, PARENT, CHILD)
    result = await runner.start("parent", {})
    assert result["status"] == "completed"
    assert result["outputs"]["result"] == 42
    child = store.children(result["run_id"])
    assert [c.status for c in child] == ["completed"]
    assert [r.run_id for r in store.list_runs()] == [result["run_id"]]  # top level only


async def test_subflow_numbers_come_back_exact(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    # 28 significant digits: a double (what JSON numbers become) keeps about 16.
    third = "0.3333333333333333333333333333"
    runner = make_runner(store, registry, clock, PARENT, CHILD)
    result = await runner.start("parent", {"x": third})
    assert result["status"] == "completed"
    record = store.get_run(result["run_id"])
    assert record is not None
    kept = json.loads(record.state, parse_float=Decimal)["values"]["result"]
    assert Decimal(str(kept)) == Decimal(third) * 2


async def test_a_failing_child_takes_the_fault_path(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    runner = make_runner(store, registry, clock, PARENT)  # no child flow known
    result = await runner.start("parent", {})
    assert result["status"] == "completed"
    assert "flow 'child' is not known" in result["outputs"]["why"]


async def test_answering_a_parent_reaches_the_waiting_child(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    runner = make_runner(store, registry, clock, PAGE_PARENT, PAGE)
    started = await runner.start("page-parent", {})
    waiting = started["waiting"]
    assert started["status"] == "waiting" and waiting["kind"] == "subflow"
    assert waiting["child_run"]["waiting"]["title"] == "Approve 99?"
    done = await runner.resume(
        started["run_id"], answer=Answer(outcome="yes", fields={"note": "ok"})
    )
    assert done["status"] == "completed"
    assert done["outputs"] == {"ok": True}


async def test_recursive_subflows_stop_at_the_depth_limit(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    runner = make_runner(store, registry, clock, RECURSIVE)
    result = await runner.start("again", {})
    assert result["status"] == "failed"
    assert "nested more than" in result["error"]["message"]


async def test_timers_sleep_inline_or_wait_durably(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    inline = make_runner(store, registry, clock, TIMER, inline_wait=7200)
    done = await inline.start("timer", {})
    assert done["status"] == "completed" and clock.slept == [3600]

    durable = make_runner(store, registry, clock, TIMER)
    waiting = await durable.start("timer", {})
    assert waiting["status"] == "waiting" and waiting["waiting"]["kind"] == "timer"
    assert store.due_runs(clock()) == []
    await durable.wake(waiting["run_id"])  # not due yet: nothing happens
    assert (await durable.result_of(waiting["run_id"]))["status"] == "waiting"
    clock.now += 3600
    due = store.due_runs(clock())
    assert [r.run_id for r in due] == [waiting["run_id"]]
    await durable.wake(waiting["run_id"])
    assert (await durable.result_of(waiting["run_id"]))["outputs"] == {"n": 1}


async def test_cancel_reaches_the_waiting_child(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    runner = make_runner(store, registry, clock, PAGE_PARENT, PAGE)
    started = await runner.start("page-parent", {})
    cancelled = await runner.cancel(started["run_id"])
    assert cancelled["status"] == "cancelled"
    assert [c.status for c in store.children(started["run_id"])] == ["cancelled"]


async def test_unknown_run(store: SqliteStore, registry: ConnectorRegistry, clock: Clock) -> None:
    runner = make_runner(store, registry, clock)
    with pytest.raises(RunNotFound):
        await runner.resume("r_nope")


class Recorder:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.seen: list[tuple[str | None, str, list[str]]] = []

    def committed(
        self,
        *,
        result: dict[str, Any],
        previous: str | None,
        visits: tuple[Visit, ...],
        parent_id: str | None,
    ) -> None:
        # Called inside the commit's transaction: the row is already written.
        record = self.store.get_run(result["run_id"])
        assert record is not None and record.status == result["status"]
        self.seen.append((previous, result["status"], [v.element for v in visits]))


async def test_the_observer_sees_every_commit(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    recorder = Recorder(store)
    runner = make_runner(store, registry, clock, PAGE, observer=recorder)
    started = await runner.start("approve", {})
    await runner.resume(started["run_id"], answer=Answer(outcome="yes", fields={"note": "n"}))
    assert recorder.seen == [(None, "waiting", ["ask"]), ("waiting", "completed", ["ok", "done"])]


async def test_connector_calls_and_faults_against_a_real_server(
    store: SqliteStore, registry: ConnectorRegistry, clock: Clock
) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers["Idempotency-Key"])
        if request.match_info["what"] == "bad":
            return web.json_response({"error": "nope"}, status=422)
        return web.json_response({"id": 7, "echo": await request.json()})

    app = web.Application()
    app.router.add_post("/{what}", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        doc = flow(
            "call",
            {
                "good": {
                    "type": "message",
                    "connector": "api",
                    "action": "POST /good",
                    "body": {"token": "{{ who }}"},
                    "outputs": {"ticket": "body.id", "code": "status"},
                    "next": "bad",
                },
                "bad": {
                    "type": "message",
                    "connector": "api",
                    "action": "POST /bad",
                    "next": "done",
                    "fault": "done",
                },
                "done": {"type": "end"},
            },
            values={
                "who": {"type": "string", "default": "ann"},
                "ticket": {"type": "string", "access": "output"},
                "code": {"type": "number", "access": "output"},
            },
            connectors={"api": {"type": "http", "base_url": str(server.make_url("/"))}},
        )
        runner = make_runner(store, registry, clock, doc)
        result = await runner.start("call", {})
    assert result["status"] == "completed"
    assert result["outputs"] == {"ticket": "7", "code": 200}
    assert seen == [f"{result['run_id']}:1", f"{result['run_id']}:2"]
    _engine, state = runner._load(result["run_id"])
    assert state.values["fault"]["status"] == 422
    assert state.values["fault"]["element"] == "bad"


def test_run_ids_sort_by_creation_time() -> None:
    a = new_run_id(lambda: 1_000.0)
    b = new_run_id(lambda: 2_000.0)
    assert a.startswith("r_") and len(a) == 28
    assert a < b
