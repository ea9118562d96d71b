"""Rule operators with the semantics of flow-format.md, run through a decision.

``decide`` builds a decision whose first outcome holds when the rule does,
runs it, and says ``True``, ``False`` or ``"fault"`` (the run failed at the
decision: an incomparable pair must fault, not quietly give false).
"""

from __future__ import annotations

from typing import Any

import pytest

from .flows import Driver, flow_doc

DUE = {"ref": "due"}  # 2026-01-01T10:00:00+02:00, i.e. 08:00 UTC
VALUES = {
    "due": {"type": "datetime", "default": "2026-01-01T10:00:00+02:00"},
    "amount": {"type": "number", "default": "0.3"},
    "nothing": {"type": "string"},
}


def decide(left: Any, op: str, right: Any) -> bool | str:
    doc = flow_doc(
        values=VALUES,
        elements={
            "d": {
                "type": "decision",
                "outcomes": [
                    {"next": "yes", "when": {"left": left, "op": op, "right": right}},
                    {"next": "no"},
                ],
            },
            "yes": {"type": "end"},
            "no": {"type": "end"},
        },
    )
    state = Driver.of(doc).start().state
    if state.status == "failed":
        assert state.error is not None and state.error["element"] == "d"
        return "fault"
    assert state.status == "completed"
    return state.path[-1] == "yes"


def lit(value: Any) -> dict[str, Any]:
    return {"literal": value}


CASES: list[tuple[str, Any, str, Any, bool | str]] = [
    # strings ignore case, orderings too
    ("eq ignores case", "Apple", "eq", "aPPLE", True),
    ("ne ignores case", "Apple", "ne", "APPLE", False),
    ("lt ignores case", "apple", "lt", "Banana", True),
    ("gt ignores case", "b", "gt", "A", True),
    ("gte equal ignoring case", "abc", "gte", "ABC", True),
    ("lte ignores case", "Zed", "lte", "alpha", False),
    # eq across types, null
    ("number eq text", 1, "eq", "1", False),
    ("number ne text", 1, "ne", "1", True),
    ("boolean eq number", True, "eq", 1, False),
    ("null eq null", lit(None), "eq", lit(None), True),
    ("null ne null", lit(None), "ne", lit(None), False),
    ("null eq zero", lit(None), "eq", 0, False),
    ("null ne empty text", {"ref": "nothing"}, "ne", "", True),
    ("exact decimals", {"ref": "amount"}, "eq", {"expr": "0.1 + 0.2"}, True),
    ("int eq decimal", 2, "eq", 2.0, True),
    ("lists compare items", lit([1, "A"]), "eq", lit([1, "a"]), True),
    ("lists of other length", lit([1]), "eq", lit([1, 1]), False),
    ("objects compare members", lit({"a": "X"}), "eq", lit({"a": "x"}), True),
    ("numbers order", 2, "gt", 1.5, True),
    ("numbers order exactly", {"expr": "0.1 + 0.2"}, "lte", 0.3, True),
    # ordering on incomparable kinds is a fault
    ("null gt number", lit(None), "gt", 1, "fault"),
    ("text lt number", "a", "lt", 1, "fault"),
    ("lists do not order", lit([1]), "gt", lit([0]), "fault"),
    ("booleans do not order", True, "gte", False, "fault"),
    ("objects do not order", lit({}), "lte", lit({}), "fault"),
    # datetimes, and ISO 8601 text against them
    ("datetime eq same instant", DUE, "eq", "2026-01-01T08:00:00Z", True),
    ("datetime eq naive is utc", DUE, "eq", "2026-01-01T08:00:00", True),
    ("datetime gt date", DUE, "gt", "2025-12-31", True),
    ("datetime lt later", DUE, "lt", "2026-01-01T09:00:00+00:00", True),
    ("text on the left", "2026-01-01T07:59:59Z", "lt", DUE, True),
    ("datetime eq not a date", DUE, "eq", "soon", False),
    ("datetime gt not a date", DUE, "gt", "soon", "fault"),
    ("datetime gt number", DUE, "gt", 5, "fault"),
    # contains, in
    ("contains substring ignoring case", "Hello World", "contains", "WORLD", True),
    ("contains absent substring", "Hello", "contains", "bye", False),
    ("contains list item ignoring case", lit(["A", "b"]), "contains", "a", True),
    ("contains list number", lit([1, 2]), "contains", 3, False),
    ("contains list uses eq", lit([1, "2"]), "contains", 2, False),
    ("contains on null", lit(None), "contains", "a", "fault"),
    ("contains on number", 123, "contains", "1", "fault"),
    ("contains number in text", "abc1", "contains", 1, "fault"),
    ("contains on object", lit({"a": 1}), "contains", "a", "fault"),
    ("in list", "B", "in", lit(["a", "b"]), True),
    ("in text", "ell", "in", "HELLO", True),
    ("in list absent", "c", "in", lit(["a", "b"]), False),
    ("in null", 1, "in", lit(None), "fault"),
    # starts_with, ends_with
    ("starts_with ignores case", "Invoice-1", "starts_with", "invoice", True),
    ("ends_with ignores case", "report.PDF", "ends_with", ".pdf", True),
    ("starts_with absent", "abc", "starts_with", "b", False),
    ("starts_with on null", lit(None), "starts_with", "a", "fault"),
    ("ends_with on number", 15, "ends_with", "5", "fault"),
    # is_empty
    ("null is empty", lit(None), "is_empty", True, True),
    ("empty text is empty", "", "is_empty", True, True),
    ("empty list is empty", lit([]), "is_empty", True, True),
    ("empty object is empty", lit({}), "is_empty", True, True),
    ("zero is not empty", 0, "is_empty", True, False),
    ("false is not empty", False, "is_empty", True, False),
    ("blank is not empty", " ", "is_empty", True, False),
    ("is_empty false", "x", "is_empty", False, True),
    ("is_empty false on null", {"ref": "nothing"}, "is_empty", False, False),
]


@pytest.mark.parametrize(
    ("left", "op", "right", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rule(left: Any, op: str, right: Any, expected: bool | str) -> None:
    assert decide(left, op, right) == expected


def test_every_operator_is_covered() -> None:
    ops = {case[2] for case in CASES}
    assert ops == {
        "eq",
        "ne",
        "gt",
        "gte",
        "lt",
        "lte",
        "contains",
        "starts_with",
        "ends_with",
        "is_empty",
        "in",
    }


def test_a_rule_fault_names_the_decision_and_the_operator() -> None:
    doc = flow_doc(
        values={"n": {"type": "number"}},
        elements={
            "gate": {
                "type": "decision",
                "outcomes": [
                    {"next": "done", "when": {"left": {"ref": "n"}, "op": "gt", "right": 1}}
                ],
            },
            "done": {"type": "end"},
        },
    )
    state = Driver.of(doc).start().state
    assert state.error is not None
    assert state.error["element"] == "gate"
    assert "gt" in state.error["message"] and "null" in state.error["message"]


def test_refs_with_missing_paths_are_null() -> None:
    doc = flow_doc(
        values={"customer": {"type": "object", "default": {"tags": ["vip"]}}},
        elements={
            "d": {
                "type": "decision",
                "outcomes": [
                    {
                        "next": "yes",
                        "when": {
                            "all": [
                                {
                                    "left": {"ref": "customer.address.city"},
                                    "op": "eq",
                                    "right": None,
                                },
                                {
                                    "left": {"ref": "customer.tags[5]"},
                                    "op": "is_empty",
                                    "right": True,
                                },
                                {"left": {"ref": "customer.tags[0]"}, "op": "eq", "right": "VIP"},
                            ]
                        },
                    },
                    {"next": "no"},
                ],
            },
            "yes": {"type": "end"},
            "no": {"type": "end"},
        },
    )
    assert Driver.of(doc).start().state.path == ["d", "yes"]
