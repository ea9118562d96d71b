"""Message elements: the CallConnector command, secrets, idempotency, outputs, faults."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.flow.commands import (
    Answer,
    CallConnector,
    ConnectorDone,
    ConnectorRequest,
    ConnectorResult,
)
from agent.flow.engine import AnswerRefused, EngineMisuse
from agent.flow.state import RunState

from .flows import SECRET, Driver, flow_doc

VALUES: dict[str, Any] = {
    "amount": {"type": "number", "access": "input", "default": "12.5"},
    "customer": {"type": "object", "access": "input", "default": {"id": 42, "name": "ACME"}},
    "note": {"type": "string", "access": "input", "default": "rush"},
    "ticket": {"type": "string", "access": "output"},
    "http_status": {"type": "number", "access": "output"},
    "trace": {"type": "string", "access": "output"},
    "reply": {"type": "object", "access": "output"},
    "first": {"type": "number", "access": "output"},
    "why": {"type": "string", "access": "output"},
    "token": {"type": "secret", "secret": "erp-token"},
}


def message_doc(
    *, notify: dict[str, Any] | None = None, connector: dict[str, Any] | None = None
) -> dict[str, Any]:
    element = {
        "type": "message",
        "connector": "erp",
        "action": "POST /approvals/{{ customer.id }}",
        "body": {
            "amount": {"ref": "amount"},
            "who": "{{ customer.name }}",
            "items": [1, {"expr": "amount * 2"}, "plain"],
        },
        "query": {"page": 2, "q": "{{ note }}"},
        "headers": {"X-Note": "{{ note }}"},
        "outputs": {
            "ticket": "body.id",
            "http_status": "status",
            "trace": "headers.X-Trace",
            "reply": "body",
            "first": "body.a.b[0]",
        },
        "retry": {"attempts": 3, "backoff": 0.25},
        "next": "done",
        "fault": "oops",
        **(notify or {}),
    }
    return flow_doc(
        values=VALUES,
        connectors={
            "erp": {
                "type": "http",
                "base_url": "https://erp.example/api",
                "headers": {"Authorization": "Bearer {{ token }}"},
                "timeout": 10,
                **(connector or {}),
            }
        },
        elements={
            "prep": {"type": "operator", "operations": [{"clear": "why"}], "next": "notify"},
            "notify": element,
            "oops": {
                "type": "operator",
                "operations": [{"set": "why", "to": "{{ fault.connector }}: {{ fault.message }}"}],
                "next": "failed",
            },
            "failed": {"type": "end", "status": "failed", "message": "{{ fault.message }}"},
            "done": {"type": "end"},
        },
    )


def started(
    doc: dict[str, Any] | None = None, **inputs: Any
) -> tuple[Driver, RunState, ConnectorRequest]:
    driver = Driver.of(doc or message_doc())
    step = driver.start(inputs)
    assert len(step.commands) == 1 and isinstance(step.commands[0], CallConnector)
    return driver, step.state, step.commands[0].request


def done(driver: Driver, state: RunState, **result: Any) -> RunState:
    visit = state.pending["visit"] if state.pending else 0
    return driver.feed(state, ConnectorDone(visit=visit, result=ConnectorResult(**result))).state


def test_the_call_carries_the_rendered_request() -> None:
    _, state, request = started()
    assert state.status == "running" and state.pending is not None
    assert request.run_id == "r1" and request.element == "notify" and request.visit == 2
    assert request.connector == "erp" and request.connector_type == "http"
    assert request.config["base_url"] == "https://erp.example/api"
    assert request.action == "POST /approvals/42"
    assert request.body == {"amount": 12.5, "who": "ACME", "items": [1, 25, "plain"]}
    json.dumps(request.body)
    assert request.query == {"page": "2", "q": "rush"}
    assert request.headers == {"Authorization": f"Bearer {SECRET}", "X-Note": "rush"}
    assert request.timeout == 10.0
    assert request.retry.attempts == 3 and request.retry.backoff == 0.25
    assert request.idempotency_key == "r1:2"
    assert request.redact == (SECRET,)


def test_the_element_timeout_wins_and_the_default_is_30() -> None:
    assert started(message_doc(notify={"timeout": 2.5}))[2].timeout == 2.5
    doc = message_doc()
    del doc["connectors"]["erp"]["timeout"]
    assert started(doc)[2].timeout == 30.0


def test_the_secret_is_in_the_command_only() -> None:
    driver, state, request = started()
    assert SECRET in request.headers["Authorization"]
    assert SECRET not in state.to_json()
    assert SECRET not in json.dumps(driver.result(state))
    finished = done(driver, state, ok=False, status=500, message="boom")
    assert SECRET not in finished.to_json()
    assert SECRET not in json.dumps(driver.result(finished))


def test_the_idempotency_key_survives_a_reload() -> None:
    driver, state, request = started()
    for _ in range(2):
        again = driver.engine.pending_commands(
            driver.reload(state), now=driver.now, secrets=driver.secrets
        )
        (command,) = again.commands
        assert isinstance(command, CallConnector)
        assert command.request == request
        assert again.state.to_json() == state.to_json()


def test_the_idempotency_key_differs_per_visit() -> None:
    doc = message_doc(notify={"next": "again"})
    doc["elements"]["again"] = {"type": "step", "outcomes": [{"id": "more", "next": "notify"}]}
    driver, state, first = started(doc)
    state = done(driver, state, ok=True, status=200, body={"id": 1})
    step = driver.feed(state, Answer(outcome="more"))
    (command,) = step.commands
    assert isinstance(command, CallConnector)
    assert command.request.idempotency_key != first.idempotency_key
    assert command.request.idempotency_key == f"r1:{command.request.visit}"


def test_a_2xx_result_fills_the_outputs_with_converted_values() -> None:
    driver, state, _ = started()
    body = {"id": 77, "a": {"b": ["7.5", 8]}}
    state = done(driver, state, ok=True, status=201, headers={"x-trace": "t-1"}, body=body)
    result = driver.result(state)
    assert result["status"] == "completed"
    assert result["path"] == ["prep", "notify", "done"]
    assert result["outputs"] == {
        "ticket": "77",
        "http_status": 201,
        "trace": "t-1",
        "reply": body,
        "first": 7.5,
        "why": "",
    }


def test_a_response_that_echoes_the_secret_keeps_it_out_of_the_values() -> None:
    driver, state, _ = started()
    echo = f"Bearer {SECRET}"
    body = {"id": echo, "a": {"b": ["1"]}, echo: [echo, 3]}
    state = done(driver, state, ok=True, status=200, headers={"x-trace": echo}, body=body)
    outputs = driver.result(state)["outputs"]
    assert state.status == "completed"
    assert outputs["ticket"] == outputs["trace"] == "Bearer ***"
    assert outputs["reply"] == {
        "id": "Bearer ***",
        "a": {"b": ["1"]},
        "Bearer ***": ["Bearer ***", 3],
    }
    assert SECRET not in json.dumps(state.values, default=str)


def test_missing_parts_and_an_empty_body_give_null() -> None:
    driver, state, _ = started()
    state = done(driver, state, ok=True, status=204, body=None)
    outputs = driver.result(state)["outputs"]
    assert state.status == "completed"
    assert outputs["reply"] is None and outputs["ticket"] is None and outputs["trace"] is None


def test_an_output_that_does_not_convert_fails_naming_element_and_value() -> None:
    driver, state, _ = started()
    state = done(driver, state, ok=True, status=200, body={"a": {"b": ["many"]}})
    assert state.status == "failed"
    assert state.error is not None and state.error["element"] == "notify"
    assert "'first'" in state.error["message"]


def test_a_failure_fills_fault_and_takes_the_fault_outcome() -> None:
    driver, state, _ = started()
    state = done(driver, state, ok=False, status=503, message="erp is down")
    assert state.values["fault"] == {
        "element": "notify",
        "connector": "erp",
        "status": 503,
        "message": "erp is down",
    }
    result = driver.result(state)
    assert result["path"] == ["prep", "notify", "oops", "failed"]
    assert result["outputs"]["why"] == "erp: erp is down"
    assert result["error"] == {"element": "failed", "message": "erp is down"}


def test_no_response_gives_a_null_fault_status() -> None:
    driver, state, _ = started()
    state = done(driver, state, ok=False, status=None, message="timed out")
    assert state.values["fault"]["status"] is None


def test_without_a_fault_outcome_the_run_fails() -> None:
    doc = message_doc()
    del doc["elements"]["notify"]["fault"]
    driver, state, _ = started(doc)
    state = done(driver, state, ok=False, status=404, message="no such approval")
    assert state.status == "failed"
    assert state.error == {"element": "notify", "message": "no such approval"}


def test_a_missing_secret_is_a_run_fault_naming_it() -> None:
    driver = Driver.of(message_doc(), secrets={})
    step = driver.start()
    assert step.commands == ()
    state = step.state
    assert state.status == "failed" and state.pending is None
    assert state.error is not None and state.error["element"] == "notify"
    assert "erp-token" in state.error["message"]


def test_a_failing_header_expression_does_not_leak_the_secret() -> None:
    doc = message_doc(connector={"headers": {"X-Key": "{{ ['a'].index(token) }}"}})
    driver = Driver.of(doc)
    state = driver.start().state
    assert state.status == "failed"
    assert SECRET not in json.dumps(driver.result(state)) and SECRET not in state.to_json()


def test_a_rendered_path_cannot_climb_out_of_the_base_url() -> None:
    doc = message_doc(notify={"action": "GET /files/{{ note }}"})
    driver = Driver.of(doc)
    state = driver.start({"note": "../admin"}).state
    assert state.status == "failed"
    assert state.error is not None and state.error["element"] == "notify"


def test_a_callback_waits_then_goes_on() -> None:
    driver, state, _ = started()
    waiting = done(driver, state, ok=True, wait=True)
    result = driver.result(waiting)
    assert result["status"] == "waiting" and result["waiting"]["kind"] == "callback"
    with pytest.raises(AnswerRefused) as refused:
        driver.feed(waiting, Answer(outcome="x"))
    assert refused.value.code == "not_waiting"
    finished = done(driver, waiting, ok=True, status=200, body={"id": 5})
    assert finished.status == "completed"
    assert driver.result(finished)["outputs"]["ticket"] == "5"


def test_a_result_for_another_visit_is_misuse() -> None:
    driver, state, _ = started()
    with pytest.raises(EngineMisuse):
        driver.feed(state, ConnectorDone(visit=99, result=ConnectorResult(ok=True)))
    with pytest.raises(EngineMisuse):
        done(driver, done(driver, state, ok=True, status=200), ok=True)
