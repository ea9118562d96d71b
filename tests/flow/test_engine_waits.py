"""Runs that wait: pages and steps (people), timers, and child runs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agent.flow.commands import Answer, ChildFinished, StartChild, TimerFired, WaitUntil
from agent.flow.engine import AnswerRefused, EngineMisuse
from agent.flow.state import RunState

from .flows import NOW, Driver, flow_doc

PAGE_VALUES: dict[str, Any] = {
    "customer": {"type": "string", "access": "input", "default": "ACME"},
    "amount": {"type": "number", "access": "input_output"},
    "note": {"type": "string", "access": "output"},
    "urgent": {"type": "boolean", "access": "output", "default": False},
}


def page_doc(*, required_amount: bool = True) -> dict[str, Any]:
    return flow_doc(
        values=PAGE_VALUES,
        elements={
            "manager": {
                "type": "page",
                "title": "Invoice from {{ customer }}",
                "content": "Amount {{ amount }}",
                "fields": [
                    {"value": "note", "label": "Comment"},
                    {"value": "amount", "label": "Amount", "required": required_amount},
                    {"value": "urgent"},
                ],
                "outcomes": [
                    {"id": "approve", "label": "Approve", "next": "done"},
                    {"id": "reject", "next": "manager"},
                ],
            },
            "done": {"type": "end"},
        },
    )


def test_a_page_waits_with_the_spec_shape() -> None:
    driver = Driver.of(page_doc())
    state = driver.start({"amount": "12.50"}).state
    assert state.status == "waiting"
    waiting = driver.result(state)["waiting"]
    assert {"element", "kind", "state_token", "outcomes", "fields", "until"} <= set(waiting)
    assert waiting["element"] == "manager" and waiting["kind"] == "input"
    assert isinstance(waiting["state_token"], str) and waiting["state_token"]
    assert waiting["until"] is None
    assert waiting["outcomes"] == [
        {"id": "approve", "label": "Approve"},
        {"id": "reject", "label": "reject"},
    ]
    assert waiting["fields"] == [
        {"value": "note", "label": "Comment", "required": False, "type": "string", "current": None},
        {"value": "amount", "label": "Amount", "required": True, "type": "number", "current": 12.5},
        {
            "value": "urgent",
            "label": "urgent",
            "required": False,
            "type": "boolean",
            "current": False,
        },
    ]
    assert waiting["title"] == "Invoice from ACME" and waiting["content"] == "Amount 12.50"


def test_an_answer_converts_fields_and_takes_the_outcome() -> None:
    driver = Driver.of(page_doc())
    waiting = driver.start().state
    token = waiting.waiting["state_token"] if waiting.waiting else None
    answer = Answer(outcome="approve", fields={"amount": "700", "urgent": "yes"}, state_token=token)
    state = driver.feed(waiting, answer).state
    result = driver.result(state)
    assert result["status"] == "completed" and result["path"] == ["manager", "done"]
    assert result["outputs"] == {"amount": 700, "note": None, "urgent": True}


def test_a_required_field_already_filled_need_not_be_resent() -> None:
    driver = Driver.of(page_doc())
    waiting = driver.start({"amount": 5}).state
    assert driver.feed(waiting, Answer(outcome="approve")).state.status == "completed"


def refusal_cases() -> list[tuple[str, Answer]]:
    return [
        ("unknown_outcome", Answer(outcome="escalate", fields={"amount": 1})),
        ("stale_token", Answer(outcome="approve", fields={"amount": 1}, state_token="old")),
        ("unknown_field", Answer(outcome="approve", fields={"amount": 1, "customer": "x"})),
        ("missing_field", Answer(outcome="approve", fields={"note": "no amount"})),
        ("missing_field", Answer(outcome="approve", fields={"amount": None})),
        ("invalid_field", Answer(outcome="approve", fields={"amount": "lots"})),
        ("invalid_field", Answer(outcome="approve", fields={"amount": 1, "urgent": "perhaps"})),
    ]


@pytest.mark.parametrize(("code", "answer"), refusal_cases(), ids=lambda v: str(v)[:40])
def test_a_refused_answer_changes_nothing(code: str, answer: Answer) -> None:
    driver = Driver.of(page_doc())
    waiting = driver.start().state
    before = waiting.to_json()
    with pytest.raises(AnswerRefused) as refused:
        driver.feed(waiting, answer)
    assert refused.value.code == code
    assert str(refused.value)
    assert waiting.to_json() == before
    # and the same answer, put right, still goes through
    good = Answer(outcome="approve", fields={"amount": 3})
    assert driver.feed(driver.reload(waiting), good).state.status == "completed"


def test_refusals_name_what_is_wrong() -> None:
    driver = Driver.of(page_doc())
    waiting = driver.start().state
    for answer, name in [
        (Answer(outcome="escalate"), "escalate"),
        (Answer(outcome="approve", fields={"customer": "x"}), "customer"),
        (Answer(outcome="approve"), "amount"),
        (Answer(outcome="approve", fields={"amount": "lots"}), "amount"),
    ]:
        with pytest.raises(AnswerRefused, match=name):
            driver.feed(waiting, answer)


def test_each_visit_gets_a_fresh_token_and_old_ones_go_stale() -> None:
    driver = Driver.of(page_doc())
    first = driver.start({"amount": 1}).state
    old = first.waiting["state_token"] if first.waiting else ""
    second = driver.feed(first, Answer(outcome="reject", state_token=old)).state
    assert second.status == "waiting" and second.path == ["manager", "manager"]
    new = second.waiting["state_token"] if second.waiting else ""
    assert new != old
    with pytest.raises(AnswerRefused) as refused:
        driver.feed(second, Answer(outcome="approve", state_token=old))
    assert refused.value.code == "stale_token"


def test_answers_to_runs_not_waiting_for_a_person_are_refused() -> None:
    driver = Driver.of(page_doc())
    done = driver.feed(driver.start({"amount": 1}).state, Answer(outcome="approve")).state
    with pytest.raises(AnswerRefused) as refused:
        driver.feed(done, Answer(outcome="approve"))
    assert refused.value.code == "not_waiting"
    timer = Driver.of(wait_doc({"seconds": 60}))
    with pytest.raises(AnswerRefused) as refused:
        timer.feed(timer.start().state, Answer(outcome="approve"))
    assert refused.value.code == "not_waiting"


def test_a_step_shows_content_and_takes_an_outcome() -> None:
    doc = flow_doc(
        values={"n": {"type": "number", "default": 3}},
        elements={
            "read": {
                "type": "step",
                "content": "You have {{ n }} items",
                "outcomes": [{"id": "ok", "label": "Got it", "next": "done"}],
            },
            "done": {"type": "end"},
        },
    )
    driver = Driver.of(doc)
    waiting = driver.start().state
    shown = driver.result(waiting)["waiting"]
    assert shown["content"] == "You have 3 items" and shown["fields"] == []
    assert shown["outcomes"] == [{"id": "ok", "label": "Got it"}]
    with pytest.raises(AnswerRefused) as refused:
        driver.feed(waiting, Answer(outcome="ok", fields={"n": 1}))
    assert refused.value.code == "unknown_field"
    assert driver.feed(waiting, Answer(outcome="ok")).state.path == ["read", "done"]


# -- timers ---------------------------------------------------------------------------


def wait_doc(wait: dict[str, Any]) -> dict[str, Any]:
    return flow_doc(
        values={"due": {"type": "datetime", "access": "input"}},
        elements={
            "pause": {"type": "wait", **wait, "next": "done"},
            "done": {"type": "end"},
        },
    )


def test_wait_seconds_waits_for_a_timer() -> None:
    driver = Driver.of(wait_doc({"seconds": 90}))
    step = driver.start()
    until = NOW + timedelta(seconds=90)
    assert step.commands == (WaitUntil(until=until),)
    waiting = driver.result(step.state)["waiting"]
    assert waiting["kind"] == "timer" and waiting["element"] == "pause"
    assert waiting["until"] == until.isoformat()


def test_a_timer_that_fires_early_asks_again_and_changes_nothing() -> None:
    driver = Driver.of(wait_doc({"seconds": 90}))
    state = driver.start().state
    before = state.to_json()
    driver.now = NOW + timedelta(seconds=89)
    early = driver.feed(state, TimerFired())
    assert early.commands == (WaitUntil(until=NOW + timedelta(seconds=90)),)
    assert early.state.to_json() == before
    driver.now = NOW + timedelta(seconds=90)
    assert driver.feed(driver.reload(state), TimerFired()).state.path == ["pause", "done"]


def test_a_stored_timer_is_rebuilt_or_fired() -> None:
    driver = Driver.of(wait_doc({"seconds": 30}))
    state = driver.reload(driver.start().state)
    again = driver.engine.pending_commands(state, now=NOW, secrets={})
    assert again.commands == (WaitUntil(until=NOW + timedelta(seconds=30)),)
    late = driver.engine.pending_commands(state, now=NOW + timedelta(hours=1), secrets={})
    assert late.state.status == "completed"


@pytest.mark.parametrize(
    ("wait", "inputs"),
    [
        ({"until": "2020-01-01T00:00:00Z"}, {}),
        ({"until": {"ref": "due"}}, {"due": "2026-03-01T13:00:00+02:00"}),  # = 11:00 UTC
        ({"seconds": 0}, {}),
    ],
)
def test_a_wait_already_due_continues_at_once(wait: dict[str, Any], inputs: dict[str, Any]) -> None:
    step = Driver.of(wait_doc(wait)).start(inputs)
    assert step.commands == ()
    assert step.state.status == "completed" and step.state.path == ["pause", "done"]


def test_wait_until_a_value_with_an_offset() -> None:
    driver = Driver.of(wait_doc({"until": {"ref": "due"}}))
    step = driver.start({"due": "2026-03-01T15:00:00+02:00"})
    (command,) = step.commands
    assert isinstance(command, WaitUntil)
    assert command.until == NOW + timedelta(hours=1)
    assert driver.result(step.state)["waiting"]["until"] == "2026-03-01T15:00:00+02:00"


def test_a_wait_on_a_null_datetime_is_a_fault() -> None:
    state = Driver.of(wait_doc({"until": {"ref": "due"}})).start().state
    assert state.status == "failed"
    assert state.error is not None and state.error["element"] == "pause"


def test_a_timer_on_a_run_not_waiting_for_one_is_misuse() -> None:
    driver = Driver.of(page_doc())
    with pytest.raises(EngineMisuse):
        driver.feed(driver.start().state, TimerFired())


# -- subflows ----------------------------------------------------------------------------


def subflow_doc(*, with_fault: bool = True) -> dict[str, Any]:
    child: dict[str, Any] = {
        "type": "subflow",
        "flow": "credit-check",
        "inputs": {"amount": {"ref": "amount"}, "customer": "{{ name }}", "fixed": 1},
        "outputs": {"score": "score", "grade": "band"},
        "next": "done",
    }
    if with_fault:
        child["fault"] = "rescue"
    return flow_doc(
        values={
            "amount": {"type": "number", "access": "input", "default": "99.5"},
            "name": {"type": "string", "default": "ACME"},
            "score": {"type": "number", "access": "output"},
            "grade": {"type": "string", "access": "output"},
            "why": {"type": "string", "access": "output"},
        },
        elements={
            "credit": child,
            "rescue": {
                "type": "operator",
                "operations": [{"set": "why", "to": {"ref": "fault.message"}}],
                "next": "done",
            },
            "done": {"type": "end"},
        },
    )


def child_started(doc: dict[str, Any] | None = None) -> tuple[Driver, RunState, StartChild]:
    driver = Driver.of(doc or subflow_doc())
    step = driver.start()
    (command,) = step.commands
    assert isinstance(command, StartChild)
    return driver, step.state, command


def test_a_subflow_starts_a_child_and_waits() -> None:
    driver, state, command = child_started()
    assert command.element == "credit" and command.visit == 1
    assert command.flow_id == "credit-check" and command.child_run_id == "r1.1"
    assert dict(command.inputs) == {"amount": 99.5, "customer": "ACME", "fixed": 1}
    waiting = driver.result(state)["waiting"]
    assert waiting["kind"] == "subflow" and waiting["element"] == "credit"
    again = driver.engine.pending_commands(driver.reload(state), now=NOW, secrets={})
    assert again.commands == (command,)


def test_a_completed_child_fills_the_outputs() -> None:
    driver, state, _ = child_started()
    event = ChildFinished(visit=1, status="completed", outputs={"score": "712", "band": "A"})
    result = driver.result(driver.feed(state, event).state)
    assert result["status"] == "completed" and result["path"] == ["credit", "done"]
    assert result["outputs"] == {"score": 712, "grade": "A", "why": None}


def test_a_child_output_that_does_not_convert_fails_the_parent() -> None:
    driver, state, _ = child_started()
    event = ChildFinished(visit=1, status="completed", outputs={"score": "high"})
    state = driver.feed(state, event).state
    assert state.status == "failed"
    assert state.error is not None and state.error["element"] == "credit"
    assert "'score'" in state.error["message"]


def test_a_failed_child_takes_the_fault_outcome() -> None:
    driver, state, _ = child_started()
    event = ChildFinished(visit=1, status="failed", error="no credit file")
    state = driver.feed(state, event).state
    assert state.values["fault"]["element"] == "credit"
    assert state.values["fault"]["status"] is None
    assert "no credit file" in state.values["fault"]["message"]
    result = driver.result(state)
    assert result["path"] == ["credit", "rescue", "done"]
    assert "no credit file" in result["outputs"]["why"]


def test_a_failed_child_without_fault_outcome_fails_the_run() -> None:
    driver, state, _ = child_started(subflow_doc(with_fault=False))
    state = driver.feed(state, ChildFinished(visit=1, status="cancelled")).state
    assert state.status == "failed"
    assert state.error is not None and state.error["element"] == "credit"
    assert "cancelled" in state.error["message"]


def test_a_child_result_for_another_visit_is_misuse() -> None:
    driver, state, _ = child_started()
    with pytest.raises(EngineMisuse):
        driver.feed(state, ChildFinished(visit=7, status="completed"))
