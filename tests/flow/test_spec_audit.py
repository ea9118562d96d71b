"""Rules of flow-format.md that an audit of the engine found untested or broken.

Each test names the rule it holds; the other test modules cover the rest
(docs/flow-format.md says where the contract left a choice to us).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from agent.flow.commands import ChildFinished
from agent.flow.engine import InputInvalid

from .flows import SECRET, Driver, flow_doc
from .test_engine_message import done, message_doc, started
from .test_engine_values import fault, outputs
from .test_engine_waits import child_started

# -- "number ... JSON output writes it as a JSON number" -------------------------------------


@pytest.mark.parametrize(
    ("given", "written"),
    [
        ("12345678901234567890", 12345678901234567890),  # whole: exact, not a rounded double
        ("-1e30", -(10**30)),
        ("1e400", 10**400),  # beyond a double: still a number, never Infinity
        ("2.5", 2.5),
        ("1" * 400 + ".5", int("1" * 400)),  # not whole, beyond a double: its whole part
    ],
)
def test_outputs_are_json_numbers_never_infinity(given: str, written: Any) -> None:
    result = outputs({"clear": "s"}, inputs={"n": given})
    assert result["n"] == written
    # Strict JSON: a consumer must be able to read what we print.
    assert json.loads(json.dumps(result, allow_nan=False))["n"] == written


def test_a_number_input_of_absurd_size_is_refused_naming_it() -> None:
    doc = flow_doc(
        values={"n": {"type": "number", "access": "input"}}, elements={"e": {"type": "end"}}
    )
    with pytest.raises(InputInvalid) as refused:
        Driver.of(doc).start({"n": "1e5000"})
    assert "'n'" in str(refused.value) and "too large" in str(refused.value)


# -- "An expression ... that fails at run time ... is a run fault naming the element" ---------


@pytest.mark.parametrize(
    ("target", "source"),
    [("n", "'nan' | float"), ("n", "'-inf' | float"), ("l", "[1, 'inf' | float]")],
)
def test_an_expression_giving_nan_or_infinity_is_a_run_fault(target: str, source: str) -> None:
    # Before: a ConversionError escaped the engine (a traceback, not a failed run).
    message = fault({"set": target, "to": {"expr": source}})
    assert source in message and "not a finite number" in message


# -- "Numbers render in templates in plain decimal form, without an exponent" -----------------


def render(template: str, inputs: dict[str, Any]) -> str:
    result: str = outputs({"set": "s", "to": template}, inputs=inputs)["s"]
    return result


def test_lists_and_objects_render_as_json_with_plain_numbers() -> None:
    inputs = {"l": [1.5, "1E+2", None, True], "o": {"a": 0.0000001, "b": "x"}}
    # Before: Python's repr, "[Decimal('1.5'), ...]".
    assert render("{{ l }}", {"l": inputs["l"]}) == '[1.5, "1E+2", null, true]'
    assert render("{{ o }}", {"o": inputs["o"]}) == '{"a": 0.0000001, "b": "x"}'
    assert render("{{ o ~ '' }}", {"o": {"n": 1e30}}) == '{"n": 1' + "0" * 30 + "}"
    assert json.loads(render("{{ [n, d] }}", {"n": "1E+2", "d": "2026-01-01T00:00:00Z"})) == [
        100,
        "2026-01-01T00:00:00+00:00",
    ]


def test_the_string_filter_renders_like_a_placeholder() -> None:
    assert render("{{ n | string }}", {"n": "1E+2"}) == "100"
    assert render("{{ n | string }}", {"n": "0.0000001"}) == "0.0000001"  # str() says 1E-7
    assert render("{{ b | string }}", {"b": False}) == "false"


# -- subflow "outputs maps a parent value to a child output value name" -----------------------


def test_a_child_output_name_the_child_lacks_fails_the_parent_naming_it() -> None:
    driver, state, _ = child_started()
    # The child completed and reported its outputs; "band" is not one of them.
    event = ChildFinished(visit=1, status="completed", outputs={"score": 700, "grade": "A"})
    state = driver.feed(state, event).state
    assert state.status == "failed"
    assert state.error is not None and state.error["element"] == "credit"
    message = state.error["message"]
    assert "'band'" in message and "'grade'" in message and "credit-check" in message


def test_a_child_output_that_is_null_is_null() -> None:
    driver, state, _ = child_started()
    event = ChildFinished(visit=1, status="completed", outputs={"score": None, "band": None})
    assert driver.result(driver.feed(state, event).state)["outputs"]["score"] is None


# -- "secret ... never appears in run results, reports ... or error messages" ----------------


def test_a_connector_fault_message_quoting_the_secret_is_redacted() -> None:
    # A plugin connector that forgets to redact its message: the engine still does.
    driver, state, request = started()
    assert request.redact == (SECRET,)
    state = done(driver, state, ok=False, status=401, message=f"bad token Bearer {SECRET}")
    result = driver.result(state)
    assert state.values["fault"]["message"] == "bad token Bearer ***"
    assert result["outputs"]["why"] == "erp: bad token Bearer ***"
    assert SECRET not in state.to_json() and SECRET not in json.dumps(result)


# -- operands: "{"literal": X}: that JSON as is"; "elsewhere any other object is a literal" ----


def test_a_literal_inside_a_render_tree_is_sent_as_is() -> None:
    body = {
        "raw": {"literal": {"ref": "amount", "t": "{{ note }}"}},
        "two_keys": {"ref": "amount", "x": "{{ note }}"},  # no operand: its members render
        "deep": [{"n": {"ref": "amount"}}],
    }
    _, _, request = started(message_doc(notify={"body": body}))
    assert request.body == {
        "raw": {"ref": "amount", "t": "{{ note }}"},
        "two_keys": {"ref": "amount", "x": "rush"},
        "deep": [{"n": 12.5}],
    }


def test_objects_outside_render_trees_are_not_rendered_at_run_time() -> None:
    literal = {"a": {"ref": "s"}, "t": "{{ s }}"}
    assert outputs({"set": "o", "to": literal}, inputs={"s": "x"})["o"] == literal


# -- operations: "null is assignable to every type" ------------------------------------------


def test_null_is_assignable_to_every_type() -> None:
    inputs = {"s": "x", "n": 5, "b": True, "l": [1], "o": {"a": 1}, "d": "2026-01-01"}
    operations = [{"set": name, "to": None} for name in inputs]
    assert outputs(*operations, inputs=inputs) == dict.fromkeys(inputs)


def test_a_connector_output_of_absurd_size_is_a_fault_naming_element_and_value() -> None:
    driver, state, _ = started()
    state = done(driver, state, ok=True, status=200, body={"a": {"b": [Decimal("1e5000")]}})
    assert state.status == "failed"
    assert state.error is not None and state.error["element"] == "notify"
    assert "'first'" in state.error["message"] and "too large" in state.error["message"]
