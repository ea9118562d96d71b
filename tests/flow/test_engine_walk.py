"""The engine's walk: decisions, operators, ends, results, inputs, max_steps, cancel."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from agent.flow.commands import (
    Answer,
    CallConnector,
    Cancel,
    ChildFinished,
    ConnectorDone,
    ConnectorResult,
    StartChild,
    TimerFired,
    WaitUntil,
)
from agent.flow.engine import EngineMisuse, InputInvalid
from agent.flow.state import RunState

from .flows import Driver, every_element_flow, flow_doc

RESULT_KEYS = {"run_id", "flow", "version", "status", "outputs", "path", "waiting", "error"}
END = {"type": "end"}


def rule(left: Any, op: str, right: Any) -> dict[str, Any]:
    return {"left": left, "op": op, "right": right}


def branching(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    return flow_doc(
        values={"amount": {"type": "number", "access": "input", "default": 0}},
        elements={
            "route": {"type": "decision", "outcomes": outcomes},
            "small": END,
            "medium": END,
            "large": END,
        },
    )


def test_decision_takes_the_first_outcome_that_holds() -> None:
    doc = branching(
        [
            {"next": "large", "when": rule({"ref": "amount"}, "gte", 1000)},
            {"next": "medium", "when": rule({"ref": "amount"}, "gte", 100)},
            {"next": "small"},
        ]
    )
    driver = Driver.of(doc)
    assert driver.start({"amount": 5000}).state.path == ["route", "large"]
    assert driver.start({"amount": 150}).state.path == ["route", "medium"]
    assert driver.start({"amount": 1}).state.path == ["route", "small"]


def test_an_outcome_without_when_holds_even_before_later_ones() -> None:
    doc = branching(
        [{"next": "small"}, {"next": "large", "when": rule({"ref": "amount"}, "gte", 0)}]
    )
    assert Driver.of(doc).start({"amount": 5}).state.path == ["route", "small"]


def test_no_outcome_holding_fails_the_run_naming_the_element() -> None:
    doc = branching([{"next": "large", "when": rule({"ref": "amount"}, "gt", 10)}])
    driver = Driver.of(doc)
    state = driver.start({"amount": 1}).state
    assert state.status == "failed"
    assert state.error is not None and state.error["element"] == "route"
    assert "route" in state.error["message"]
    assert driver.result(state)["error"] == state.error


def test_all_any_not_combine_rules() -> None:
    amount = {"ref": "amount"}
    when = {
        "all": [
            {"any": [rule(amount, "eq", 7), rule(amount, "eq", 9)]},
            {"not": rule(amount, "eq", 9)},
        ]
    }
    doc = branching([{"next": "large", "when": when}, {"next": "small"}])
    driver = Driver.of(doc)
    assert driver.start({"amount": 7}).state.path[-1] == "large"
    assert driver.start({"amount": 9}).state.path[-1] == "small"
    assert driver.start({"amount": 8}).state.path[-1] == "small"


def test_operator_applies_operations_in_order_then_next() -> None:
    doc = flow_doc(
        values={"n": {"type": "number", "access": "output", "default": 1}},
        elements={
            "calc": {
                "type": "operator",
                "operations": [
                    {"add": "n", "by": 2},
                    {"multiply": "n", "by": 10},
                    {"subtract": "n", "by": 5},
                    {"divide": "n", "by": 5},
                ],
                "next": "done",
            },
            "done": END,
        },
    )
    driver = Driver.of(doc)
    state = driver.start().state
    assert driver.result(state)["outputs"] == {"n": 5}
    assert state.path == ["calc", "done"]


def test_end_failed_gives_its_message() -> None:
    doc = flow_doc(
        values={"who": {"type": "string", "access": "input"}},
        elements={"stop": {"type": "end", "status": "failed", "message": "{{ who }} was refused"}},
    )
    driver = Driver.of(doc)
    result = driver.result(driver.start({"who": "ACME"}).state)
    assert result["status"] == "failed"
    assert result["error"] == {"element": "stop", "message": "ACME was refused"}


def test_end_failed_without_message_still_says_something() -> None:
    doc = flow_doc(elements={"stop": {"type": "end", "status": "failed"}})
    driver = Driver.of(doc)
    error = driver.result(driver.start().state)["error"]
    assert error["element"] == "stop" and error["message"]


def loop_doc() -> dict[str, Any]:
    return flow_doc(
        values={"n": {"type": "number", "default": 0}},
        elements={
            "inc": {"type": "operator", "operations": [{"add": "n", "by": 1}], "next": "check"},
            "check": {
                "type": "decision",
                "outcomes": [
                    {"next": "inc", "when": rule({"ref": "n"}, "lt", 3)},
                    {"next": "done"},
                ],
            },
            "done": END,
        },
    )


def test_cycles_run_until_they_exit() -> None:
    state = Driver.of(loop_doc()).start().state
    assert state.status == "completed"
    assert state.path == ["inc", "check"] * 3 + ["done"]


def test_more_than_max_steps_fails_saying_so() -> None:
    doc = flow_doc(
        elements={
            "spin": {"type": "operator", "operations": [{"clear": "x"}], "next": "spin"},
        },
        values={"x": {"type": "string"}},
    )
    driver = Driver.of(doc, max_steps=25)
    state = driver.start().state
    assert state.status == "failed"
    assert len(state.path) == 25
    assert state.error is not None and state.error["element"] == "spin"
    assert "max_steps" in state.error["message"] and "25" in state.error["message"]


def test_max_steps_counts_visits_exactly() -> None:
    # 7 visits with max_steps=7 is fine; the limit is on visiting *more*.
    assert Driver.of(loop_doc(), max_steps=7).start().state.status == "completed"
    assert Driver.of(loop_doc(), max_steps=6).start().state.status == "failed"


def test_inputs_are_converted_to_their_types() -> None:
    doc = flow_doc(
        values={
            "amount": {"type": "number", "access": "input"},
            "flag": {"type": "boolean", "access": "input_output"},
            "due": {"type": "datetime", "access": "input_output"},
            "meta": {"type": "object", "access": "input_output"},
            "echo": {"type": "number", "access": "output"},
        },
        elements={
            "copy": {
                "type": "operator",
                "operations": [{"set": "echo", "to": {"ref": "amount"}}],
                "next": "done",
            },
            "done": END,
        },
    )
    driver = Driver.of(doc)
    inputs = {"amount": "700", "flag": "yes", "due": "2026-05-01T08:00:00", "meta": '{"a": 1}'}
    result = driver.result(driver.start(inputs).state)
    assert result["outputs"] == {
        "flag": True,
        "due": "2026-05-01T08:00:00+00:00",
        "meta": {"a": 1},
        "echo": 700,
    }


def test_bad_inputs_are_all_named() -> None:
    doc = flow_doc(
        values={
            "amount": {"type": "number", "access": "input"},
            "secret_note": {"type": "string"},
            "total": {"type": "number", "access": "output"},
        },
        elements={"done": END},
    )
    with pytest.raises(InputInvalid) as caught:
        Driver.of(doc).start({"amount": "lots", "secret_note": "x", "total": 1, "nope": 2})
    problems = caught.value.problems
    assert len(problems) == 4
    for name in ("amount", "secret_note", "total", "nope"):
        assert any(f"'{name}'" in p for p in problems), name


def test_values_without_default_or_input_are_null() -> None:
    doc = flow_doc(
        values={"a": {"type": "string", "access": "output"}, "b": {"type": "list"}},
        elements={"done": END},
    )
    driver = Driver.of(doc)
    state = driver.start().state
    assert driver.result(state)["outputs"] == {"a": None}
    assert state.values["b"] is None and state.values["fault"] is None


def waiting_doc() -> dict[str, Any]:
    return flow_doc(
        values={
            "note": {"type": "string", "access": "output"},
            "total": {"type": "number", "access": "input_output", "default": 3},
        },
        elements={
            "ask": {
                "type": "page",
                "fields": [{"value": "note", "label": "Note"}],
                "outcomes": [
                    {"id": "ok", "label": "OK", "next": "done"},
                    {"id": "no", "label": "No", "next": "stop"},
                ],
            },
            "done": END,
            "stop": {"type": "end", "status": "failed", "message": "refused"},
        },
    )


def test_result_shape_for_every_status() -> None:
    driver = Driver.of(waiting_doc())
    waiting = driver.start().state
    completed = driver.feed(waiting, Answer(outcome="ok", fields={"note": "hi"})).state
    cancelled = driver.feed(waiting, Cancel()).state
    failed = driver.feed(waiting, Answer(outcome="no")).state
    # A run is "running" between elements, e.g. while a connector call is out.
    running = RunState("r1", "t", 0, values={"fault": None}, current="ask")

    results = {
        "waiting": driver.result(waiting),
        "completed": driver.result(completed),
        "cancelled": driver.result(cancelled),
        "failed": driver.result(failed),
        "running": driver.result(running),
    }
    for status, result in results.items():
        assert set(result) == RESULT_KEYS, status
        assert result["status"] == status
        assert (result["waiting"] is not None) == (status == "waiting"), status
        assert (result["error"] is not None) == (status == "failed"), status
        json.dumps(result)
    assert results["waiting"]["run_id"] == "r1"
    assert results["waiting"]["flow"] == "t" and results["waiting"]["version"] == 0
    assert results["completed"]["outputs"] == {"note": "hi", "total": 3}
    assert results["completed"]["path"] == ["ask", "done"]
    assert results["cancelled"]["path"] == ["ask"]
    assert results["failed"]["error"] == {"element": "stop", "message": "refused"}
    assert results["waiting"]["waiting"]["element"] == "ask"


def test_cancel_stops_a_waiting_run_and_leaves_a_finished_one() -> None:
    driver = Driver.of(waiting_doc())
    waiting = driver.start().state
    before = waiting.to_json()
    cancelled = driver.feed(waiting, Cancel(reason="operator")).state
    assert waiting.to_json() == before
    assert cancelled.status == "cancelled"
    assert cancelled.waiting is None and cancelled.pending is None
    again = driver.feed(cancelled, Cancel()).state
    assert again.to_json() == cancelled.to_json()


def test_events_on_a_finished_run_are_misuse() -> None:
    driver = Driver.of(waiting_doc())
    done = driver.feed(driver.start().state, Answer(outcome="ok")).state
    assert done.status == "completed"
    with pytest.raises(EngineMisuse):
        driver.feed(done, TimerFired())


def test_state_json_round_trip_is_exact() -> None:
    driver = Driver.of(waiting_doc())
    state = driver.start({"total": "0.1"}).state
    again = driver.reload(state)
    assert again.to_json() == state.to_json()
    assert again.values == state.values
    assert RunState.peek(state.to_json())["status"] == "waiting"


def test_pending_commands_of_a_running_run_goes_on() -> None:
    driver = Driver.of(loop_doc())
    running = RunState("r1", "t", 0, values={"fault": None, "n": None}, current="inc")
    step = driver.engine.pending_commands(driver.reload(running), now=driver.now, secrets={})
    assert step.state.status == "completed"
    assert running.status == "running"


def test_a_flow_with_every_element_runs_end_to_end_across_reloads() -> None:
    driver = Driver.of(every_element_flow())
    step = driver.start({"amount": "10", "customer": {"id": 7, "name": "ACME"}})
    (call,) = step.commands
    assert isinstance(call, CallConnector)
    assert call.request.action == "POST /approvals/7"
    assert call.request.body == {"amount": 10.3, "who": "ACME", "lines": [1, 2]}

    # the store gives back every state: a restart may happen between any two events
    state = driver.reload(step.state)
    ok = ConnectorResult(ok=True, status=201, headers={"x-trace": "tr"}, body={"id": 9})
    step = driver.feed(state, ConnectorDone(visit=call.request.visit, result=ok))
    (child,) = step.commands
    assert isinstance(child, StartChild) and child.flow_id == "credit-check"

    state = driver.reload(step.state)
    step = driver.feed(
        state, ChildFinished(visit=child.visit, status="completed", outputs={"score": 700})
    )
    (timer,) = step.commands
    assert isinstance(timer, WaitUntil) and timer.until == driver.now + timedelta(seconds=60)

    driver.now = timer.until
    step = driver.feed(driver.reload(step.state), TimerFired())
    assert step.state.waiting is not None and step.state.waiting["element"] == "confirm"
    assert step.state.waiting["content"] == "Approved 10.3"

    step = driver.feed(driver.reload(step.state), Answer(outcome="ok"))
    result = driver.result(driver.reload(step.state))
    assert result["status"] == "completed"
    assert result["path"] == [
        "prepare",
        "notify",
        "credit",
        "route",
        "pause",
        "confirm",
        "until",
        "done",
    ]
    assert result["outputs"] == {
        "customer": {"id": 7, "name": "ACME", "status": "checking"},
        "note": "Invoice for ACME",
        "approved": False,
        "ticket": "9",
    }
