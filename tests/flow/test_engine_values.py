"""Operations, exact decimals, datetimes, templates and the expression sandbox."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from agent.flow.commands import Answer

from .flows import Driver, flow_doc

VALUES: dict[str, Any] = {
    "n": {"type": "number", "access": "input_output"},
    "s": {"type": "string", "access": "input_output"},
    "b": {"type": "boolean", "access": "input_output"},
    "d": {"type": "datetime", "access": "input_output"},
    "o": {"type": "object", "access": "input_output"},
    "l": {"type": "list", "access": "input_output"},
}


def operate(*operations: dict[str, Any], inputs: dict[str, Any] | None = None) -> Driver:
    """Run one operator element ``a`` and keep the driver (``driver.steps[-1]``)."""
    doc = flow_doc(
        values=VALUES,
        elements={
            "a": {"type": "operator", "operations": list(operations), "next": "done"},
            "done": {"type": "end"},
        },
    )
    driver = Driver.of(doc)
    driver.start(inputs)
    return driver


def outputs(*operations: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    driver = operate(*operations, inputs=inputs)
    state = driver.steps[-1].state
    assert state.status == "completed", state.error
    result: dict[str, Any] = driver.result(state)["outputs"]
    return result


def fault(*operations: dict[str, Any], inputs: dict[str, Any] | None = None) -> str:
    """The error message of a run that must fail at element ``a``."""
    state = operate(*operations, inputs=inputs).steps[-1].state
    assert state.status == "failed"
    assert state.error is not None and state.error["element"] == "a"
    message: str = state.error["message"]
    assert message
    return message


# -- exact decimals ------------------------------------------------------------------------


def test_point_one_plus_point_two_is_point_three() -> None:
    out = outputs(
        {"set": "b", "to": {"expr": "0.1 + 0.2 == 0.3"}},
        {"set": "n", "to": 0.1},
        {"add": "n", "by": 0.2},
    )
    assert out["b"] is True
    assert out["n"] == 0.3
    assert json.dumps(out["n"]) == "0.3"


def test_arithmetic_stays_exact_in_the_run() -> None:
    driver = operate(
        {"multiply": "n", "by": 3},
        {"set": "s", "to": "{{ n }}"},
        inputs={"n": "1.1"},
    )
    state = driver.steps[-1].state
    assert state.values["n"] == Decimal("3.3")
    assert state.values["s"] == "3.3"


def test_division_keeps_its_digits_across_a_stored_state() -> None:
    driver = operate({"divide": "n", "by": 3}, inputs={"n": 1})
    state = driver.steps[-1].state
    assert driver.reload(state).values["n"] == Decimal(1) / Decimal(3)


def test_division_by_zero_is_a_fault() -> None:
    assert "division by zero" in fault({"divide": "n", "by": 0}, inputs={"n": 5})
    assert "division by zero" in fault({"set": "n", "to": {"expr": "n / 0"}}, inputs={"n": 5})


# -- datetimes ---------------------------------------------------------------------------


def test_datetimes_come_out_with_their_offset() -> None:
    keep = {"clear": "s"}
    assert outputs(keep, inputs={"d": "2026-01-01T10:00:00+02:00"})["d"] == (
        "2026-01-01T10:00:00+02:00"
    )
    assert outputs(keep, inputs={"d": "2026-01-01T10:00:00"})["d"] == "2026-01-01T10:00:00+00:00"
    assert outputs(keep, inputs={"d": "2026-01-01T10:00:00Z"})["d"] == "2026-01-01T10:00:00+00:00"


def test_a_datetime_target_takes_iso_text() -> None:
    out = outputs({"set": "d", "to": "2026-02-03T04:05:06-05:00"})
    assert out["d"] == "2026-02-03T04:05:06-05:00"
    assert "'d'" in fault({"set": "d", "to": {"expr": "'not a date'"}})


# -- operations --------------------------------------------------------------------------


def test_set_and_arithmetic() -> None:
    out = outputs(
        {"set": "n", "to": 10},
        {"subtract": "n", "by": {"expr": "2.5"}},
        {"multiply": "n", "by": {"ref": "n"}},
        {"set": "s", "to": {"literal": "{{ not a template }}"}},
        {"set": "b", "to": {"expr": "n > 50"}},
    )
    assert out["n"] == 56.25
    assert out["s"] == "{{ not a template }}"
    assert out["b"] is True


def test_arithmetic_and_append_treat_null_as_zero_and_empty() -> None:
    out = outputs({"add": "n", "by": 4}, {"append": "l", "item": {"ref": "n"}})
    assert out["n"] == 4 and out["l"] == [4]


@pytest.mark.parametrize(
    ("name", "empty"),
    [("s", ""), ("n", 0), ("b", False), ("l", []), ("o", {}), ("d", None)],
)
def test_clear_sets_the_empty_value_of_the_type(name: str, empty: Any) -> None:
    inputs = {"s": "x", "n": 5, "b": True, "l": [1], "o": {"a": 1}, "d": "2026-01-01"}
    out = outputs({"clear": name}, inputs=inputs)
    assert out[name] == empty and type(out[name]) is type(empty)


def test_nested_path_targets() -> None:
    out = outputs(
        {"set": "o.address.city", "to": "Lyon"},
        {"add": "o.visits", "by": 1},
        {"append": "o.tags", "item": "new"},
        {"set": "l[1]", "to": "b"},
        {"clear": "o.gone"},
        inputs={"l": ["a", "x", "c"], "o": {"gone": 1}},
    )
    assert out["o"] == {"gone": None, "address": {"city": "Lyon"}, "visits": 1, "tags": ["new"]}
    assert out["l"] == ["a", "b", "c"]


def test_nested_set_does_not_write_through_to_the_previous_state() -> None:
    doc = flow_doc(
        values=VALUES,
        elements={
            "ask": {"type": "step", "outcomes": [{"id": "go", "next": "a"}]},
            "a": {"type": "operator", "operations": [{"set": "o.x", "to": 2}], "next": "done"},
            "done": {"type": "end"},
        },
    )
    driver = Driver.of(doc)
    waiting = driver.start({"o": {"x": 1}}).state
    before = waiting.to_json()
    driver.feed(waiting, Answer(outcome="go"))
    assert waiting.to_json() == before


def test_an_index_out_of_range_is_a_fault() -> None:
    assert "out of range" in fault({"set": "l[5]", "to": 1}, inputs={"l": [1]})


@pytest.mark.parametrize(
    ("operation", "inputs"),
    [
        ({"set": "n", "to": {"expr": "'abc'"}}, {}),
        ({"set": "s", "to": {"expr": "5"}}, {}),
        ({"set": "b", "to": {"expr": "'yes'"}}, {}),
        ({"set": "l", "to": {"ref": "o"}}, {"o": {"a": 1}}),
        ({"set": "o", "to": {"ref": "l"}}, {"l": [1]}),
        ({"add": "n", "by": {"ref": "s"}}, {"s": "3"}),
        ({"add": "o.count", "by": 1}, {"o": {"count": "three"}}),
        ({"append": "o.tags", "item": 1}, {"o": {"tags": "vip"}}),
    ],
)
def test_a_value_of_the_wrong_type_is_a_fault_naming_it(
    operation: dict[str, Any], inputs: dict[str, Any]
) -> None:
    message = fault(operation, inputs=inputs)
    target = next(iter(operation.values()))
    assert f"'{target}'" in message or f"'{target.split('.')[0]}'" in message


# -- templates ----------------------------------------------------------------------------


def render(template: str, inputs: dict[str, Any] | None = None) -> str:
    result: str = outputs({"set": "s", "to": template}, inputs=inputs)["s"]
    return result


def test_numbers_render_plain_without_exponent() -> None:
    assert render("{{ n }}", {"n": "1e3"}) == "1000"
    assert render("{{ n }}", {"n": "1e30"}) == "1" + "0" * 30
    assert render("{{ n }}", {"n": "0.0000001"}) == "0.0000001"
    assert render("{{ n }}", {"n": "2.50"}) == "2.50"
    assert render("{{ 0.1 + 0.2 }}") == "0.3"
    assert render("{{ n ~ '!' }}", {"n": "1E+2"}) == "100!"


def test_templates_render_other_types_readably() -> None:
    assert render("[{{ s }}]") == "[]"  # null renders as nothing
    out = render("{{ b }}|{{ d }}|{{ o.name }}|", {"b": True, "d": "2026-01-01T00:00:00+01:00"})
    assert out == "true|2026-01-01T00:00:00+01:00||"


# -- the sandbox --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "s.__class__",
        "s.__class__.__mro__",
        "o.__init__",
        "l.append(1)",
        "o.update({'a': 1})",
        "'x' * 10000000",
        "[1, 2] * 1000000",
        "2 ** 100000",
        "(9 ** 1000) ** 1000",
        "range(10000000) | list",
        "'x' | center(100000000)",
        "'ab' ~ ('c' * 999999) ~ ('d' * 999999)",
        "s.format.__globals__",
        "o.nope()",
    ],
)
def test_the_sandbox_turns_abuse_into_a_fault_naming_the_element(source: str) -> None:
    message = fault({"set": "s", "to": {"expr": source}}, inputs={"s": "a", "o": {}, "l": []})
    assert source in message


@pytest.mark.parametrize(
    "template",
    [
        "{{ s.__class__ }}",
        "{{ 'x' * 10000000 }}",
        "{% for i in range(1001) %}{{ 'y' * 1000 }}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ s }}",
    ],
)
def test_templates_are_sandboxed_and_bounded(template: str) -> None:
    assert template in fault({"set": "s", "to": template}, inputs={"s": "a"})


def test_template_loops_still_work() -> None:
    template = (
        "{% for x in l %}{{ loop.index }}/{{ loop.length }}:{{ x }} {% else %}none{% endfor %}"
    )
    assert render(template, {"l": ["a", "b"]}) == "1/2:a 2/2:b "
    assert render(template, {"l": []}) == "none"


def test_expression_results_are_plain_data() -> None:
    out = outputs(
        {"set": "l", "to": {"expr": "[o.missing, 1.5, (1, 2)]"}},
        {"set": "o", "to": {"expr": "{'k': l | length}"}},
    )
    assert out["l"] == [None, 1.5, [1, 2]]
    assert out["o"] == {"k": 3}
    assert "|list" in fault({"set": "l", "to": {"expr": "l | map('string')"}}, inputs={"l": [1]})
