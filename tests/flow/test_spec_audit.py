"""Rules of flow-format.md that an audit of the engine found untested or broken.

Each test names the rule it holds; the other test modules cover the rest
(docs/flow-format.md says where the contract left a choice to us).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.flow.engine import InputInvalid

from .flows import Driver, flow_doc
from .test_engine_values import fault, outputs

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
