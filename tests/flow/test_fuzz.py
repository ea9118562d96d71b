"""parse_flow on hostile input: it returns a Flow or raises FlowInvalid, nothing else.

Documents that still parse after a mutation are also started on the engine,
which must give a run (failed, perhaps), a result and a storable state.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.flow.engine import Engine, InputInvalid
from agent.flow.model import Flow, FlowInvalid, parse_flow
from agent.flow.state import RunState

from .flows import NOW, every_element_flow, example_flows, flow_doc, plugin_types

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VALID = [every_element_flow()] + [d for d in example_flows().values() if not plugin_types(d)]
# Every key and keyword of the format, so that insertions hit real grammar.
GRAMMAR = """
format id name version values connectors triggers start elements
type access default secret base_url headers timeout schedule timezone webhook
label next fault outcomes operations connector action body query inputs
outputs retry attempts backoff title content fields seconds until flow
status message when left op right all any not ref expr literal value required
set add subtract multiply divide append clear to by item
"""
KEYWORDS = """
flow/v1 decision operator page step wait subflow end http service number string
eq gt contains is_empty in input output private datetime list object
"""
WORDS = GRAMMAR.split()
STRINGS = [
    *WORDS,
    *KEYWORDS.split(),
    "{{ amount }}",
    "{{ }}",
    "{% for x in y %}",
    "POST /x/{{ amount }}",
    "*/5 * * * *",
    "2026-01-01T00:00:00Z",
    "body.a[0]",
    "headers.X",
    "a..b",
    "",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(STRINGS)
)
keys = st.text(max_size=12) | st.sampled_from(WORDS)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=40,
)
# For the many slots of a flow-shaped document: smaller, or the run gets slow.
small_json = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=8,
)


def assert_parse_is_total(doc: Any) -> Flow | None:
    try:
        flow = parse_flow(doc)
    except FlowInvalid as exc:
        assert exc.issues, "FlowInvalid without issues"
        for issue in exc.issues:
            assert isinstance(issue.path, str) and issue.path
            assert isinstance(issue.message, str) and issue.message.strip()
        return None
    assert isinstance(flow, Flow)
    return flow


def assert_engine_is_total(flow: Flow) -> None:
    engine = Engine(flow, max_steps=50)
    try:
        step = engine.start("r1", {}, now=NOW, secrets={"erp-token": "t"})
    except InputInvalid:  # pragma: no cover - no inputs are given
        raise AssertionError("no inputs given, yet InputInvalid") from None
    result = engine.result(step.state)
    assert result["status"] in ("running", "waiting", "completed", "failed")
    json.dumps(result)
    again = RunState.from_json(step.state.to_json(), flow)
    assert again.to_json() == step.state.to_json()


@FUZZ
@given(json_values)
def test_arbitrary_json_gives_flow_invalid(doc: Any) -> None:
    assert_parse_is_total(doc)


flow_shaped = st.fixed_dictionaries(
    {"format": st.just("flow/v1"), "id": st.sampled_from(["t", "Bad Id", 5])},
    optional={
        "start": st.sampled_from(["a", "b", 3]),
        "values": st.dictionaries(
            st.sampled_from(["amount", "note", "fault", "2x", "token"]),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["number", "string", "secret", "list", [], "x"])},
                optional={"default": small_json, "access": small_json, "secret": small_json},
            ),
            max_size=3,
        ),
        "elements": st.dictionaries(
            st.sampled_from(["a", "b", "done", "Bad"]),
            st.dictionaries(st.sampled_from(WORDS), small_json, max_size=6).map(
                lambda d: {"type": "operator", **d}
            )
            | st.fixed_dictionaries(
                {
                    "type": st.sampled_from(
                        ["decision", "operator", "message", "page", "step", "wait", "end"]
                    )
                },
                optional={
                    "next": st.sampled_from(["a", "b", "zz"]),
                    "outcomes": small_json,
                    "operations": small_json,
                    "seconds": small_json,
                    "fields": small_json,
                },
            ),
            max_size=3,
        ),
        "triggers": small_json,
        "connectors": small_json,
    },
)


@settings(FUZZ, max_examples=150)
@given(flow_shaped)
def test_flow_shaped_documents_give_flow_invalid_or_a_flow(doc: dict[str, Any]) -> None:
    flow = assert_parse_is_total(doc)
    if flow is not None:
        assert_engine_is_total(flow)


def locations(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [here]
    if isinstance(node, dict):
        for key, child in node.items():
            found += locations(child, (*here, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += locations(child, (*here, index))
    return found


def at(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


OTHER_TYPE: list[Any] = [None, True, 0, 2.5, "x", [], {}]


@settings(FUZZ, max_examples=150)
@given(st.data())
def test_mutated_valid_flows_give_flow_invalid_or_run(data: st.DataObject) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(VALID), label="base"))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(locations(doc)), label="where")
        node = at(doc, path)
        kind = data.draw(
            st.sampled_from(["drop", "retype", "rename", "insert", "replace"]), label="how"
        )
        new: Any = node
        if kind == "drop" and path:
            del at(doc, path[:-1])[path[-1]]
            continue
        if kind == "retype":
            new = data.draw(st.sampled_from([v for v in OTHER_TYPE if type(v) is not type(node)]))
        elif kind == "rename" and isinstance(node, str):
            new = data.draw(st.sampled_from([node + "x", node.upper(), "", *STRINGS]))
        elif kind == "insert" and isinstance(node, dict):
            node[data.draw(keys, label="key")] = data.draw(json_values, label="value")
            continue
        elif kind == "insert" and isinstance(node, list):
            node.insert(data.draw(st.integers(0, len(node))), data.draw(json_values))
            continue
        else:
            new = copy.deepcopy(new) if kind != "replace" else data.draw(json_values)
        if path:
            at(doc, path[:-1])[path[-1]] = copy.deepcopy(new)
        else:
            doc = copy.deepcopy(new)
    flow = assert_parse_is_total(doc)
    if flow is not None:
        assert_engine_is_total(flow)


def nested_lists(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def nested_objects(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def deep_places(deep: Any) -> dict[str, Any]:
    end = {"type": "end"}
    operator = {"type": "operator", "operations": [{"set": "meta", "to": deep}], "next": "done"}
    meta = {"meta": {"type": "object"}}
    return {
        "document": deep,
        "values": flow_doc(values=deep, elements={"a": end}),
        "default": flow_doc(
            values={"meta": {"type": "object", "default": deep}}, elements={"a": end}
        ),
        "literal": flow_doc(values=meta, elements={"a": operator, "done": end}),
        "operand literal": flow_doc(
            values=meta,
            elements={
                "a": {**operator, "operations": [{"set": "meta", "to": {"literal": deep}}]},
                "done": end,
            },
        ),
        "element": flow_doc(elements={"a": deep}),
        "rule": flow_doc(
            elements={
                "a": {"type": "decision", "outcomes": [{"next": "done", "when": deep}]},
                "done": end,
            }
        ),
    }


def test_deep_nesting_gives_flow_invalid_not_recursion_error() -> None:
    for shape in (nested_lists(5000), nested_objects(5000)):
        for where, doc in deep_places(shape).items():
            try:
                parse_flow(doc)
            except FlowInvalid as exc:
                assert exc.issues and all(i.message for i in exc.issues), where
            else:
                raise AssertionError(f"deep nesting in {where} was accepted")


def test_deeply_nested_rules_give_flow_invalid() -> None:
    rule: Any = {"left": 1, "op": "eq", "right": 1}
    for _ in range(5000):
        rule = {"not": rule}
    doc = flow_doc(
        elements={
            "a": {"type": "decision", "outcomes": [{"next": "done", "when": rule}]},
            "done": {"type": "end"},
        }
    )
    try:
        parse_flow(doc)
    except FlowInvalid as exc:
        assert "deep" in str(exc)
    else:
        raise AssertionError("5000 nested rules were accepted")


def test_deeply_nested_expressions_give_an_issue_at_their_path() -> None:
    doc = flow_doc(
        values={"n": {"type": "number"}},
        elements={
            "a": {
                "type": "operator",
                "operations": [{"set": "n", "to": {"expr": "(" * 3000 + "1" + ")" * 3000}}],
                "next": "done",
            },
            "done": {"type": "end"},
        },
    )
    try:
        parse_flow(doc)
    except FlowInvalid as exc:
        assert [i.path for i in exc.issues] == ["elements.a.operations[0].to.expr"]
    else:
        raise AssertionError("a 3000-deep expression was accepted")
