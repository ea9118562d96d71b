"""flow/v1 validation: a corpus of invalid documents, each with the issues it must give.

Every file in ``invalid/`` is ``{"expect": [[path, fragment], ...], "flow": {...}}``.
The document must be refused with exactly those issues (no more): each one at
that path, its message containing that fragment (case-insensitive).  Two files
hold NaN and Infinity on purpose: Python's json module reads them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.flow.model import Flow, FlowInvalid, Issue, parse_flow

from .flows import every_element_flow, example_flows, flow_doc, plugin_types

HERE = Path(__file__).parent
CORPUS = sorted((HERE / "invalid").glob("*.json"))
EXAMPLES = example_flows()


def issues_of(doc: Any) -> list[Issue]:
    with pytest.raises(FlowInvalid) as caught:
        parse_flow(doc)
    return caught.value.issues


def describe(issues: list[Issue]) -> str:
    return "\n".join(f"  {i.path}: {i.message}" for i in issues)


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 45


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_invalid_document_gives_its_issues(path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    expected = [(str(where), str(fragment)) for where, fragment in case["expect"]]
    issues = issues_of(case["flow"])
    for where, fragment in expected:
        matches = [i for i in issues if i.path == where and fragment.lower() in i.message.lower()]
        assert matches, f"no issue at {where!r} mentioning {fragment!r}; got:\n{describe(issues)}"
    assert len(issues) == len(expected), f"unexpected extra issues:\n{describe(issues)}"
    for issue in issues:
        assert isinstance(issue.path, str) and issue.path
        assert issue.message.strip()


def test_all_problems_of_a_document_are_reported_at_once() -> None:
    doc = flow_doc(
        values={"amount": {"type": "numbr"}, "note": {"type": "string"}},
        elements={
            "a": {"type": "operator", "operations": [{"set": "nte", "to": "x"}], "next": "b"},
            "b": {
                "type": "decision",
                "outcomes": [{"next": "done", "when": {"left": 1, "op": "bigger", "right": 0}}],
            },
            "c": {"type": "wait", "next": "done"},
            "done": {"type": "end", "status": "finished"},
        },
    )
    doc["format"] = "flow/v0"
    issues = issues_of(doc)
    assert sorted(i.path for i in issues) == sorted(
        [
            "format",
            "values.amount.type",
            "elements.a.operations[0].set",
            "elements.b.outcomes[0].when.op",
            "elements.c",
            "elements.done.status",
        ]
    )
    assert str(FlowInvalid(issues)).count(";") == len(issues) - 1


def test_issues_are_in_document_order_within_an_element() -> None:
    doc = flow_doc(
        elements={
            "a": {"type": "operator", "label": 1, "operations": [], "next": "nowhere"},
            "done": {"type": "end"},
        }
    )
    paths = [i.path for i in issues_of(doc)]
    assert paths == ["elements.a.label", "elements.a.next", "elements.a.operations"]


def test_the_bundled_examples_are_found() -> None:
    assert {"hello.json", "invoice-approval.json", "flows/credit-check.json"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_bundled_examples_are_valid(name: str) -> None:
    doc = EXAMPLES[name]
    missing = plugin_types(doc)
    if missing:
        # A plugin's example: without the plugin, its type alone is refused.
        issues = issues_of(doc)
        assert all(
            any(repr(t) in i.message for t in missing) or "unknown connector" in i.message
            for i in issues
        ), describe(issues)
        return
    flow = parse_flow(doc)
    assert flow.id == doc["id"]
    assert set(flow.elements) == set(doc["elements"])
    assert flow.start in flow.elements


def test_a_flow_with_every_element_type_parses() -> None:
    flow = parse_flow(every_element_flow())
    types = {element.type for element in flow.elements.values()}
    assert types == {"decision", "operator", "message", "page", "step", "wait", "subflow", "end"}
    notify = flow.elements["notify"]
    assert notify.retry_attempts == 3 and notify.retry_backoff == 0.25
    assert notify.outputs == {
        "ticket": "body.id",
        "http_status": "status",
        "trace": "headers.X-Trace",
    }
    assert flow.connectors["erp"].timeout == 10
    assert [t.schedule for t in flow.triggers] == ["*/5 * * * *", None]
    assert flow.triggers[1].webhook
    assert flow.secret_names == frozenset({"token"})
    assert {v.name for v in flow.inputs} == {"amount", "customer"}


def test_version_defaults_to_zero_and_unreached_elements_are_allowed() -> None:
    doc = flow_doc(elements={"a": {"type": "end"}, "island": {"type": "end", "status": "failed"}})
    flow = parse_flow(doc)
    assert flow.version == 0
    assert "island" in flow.elements


def test_cycles_are_allowed() -> None:
    doc = flow_doc(
        values={"n": {"type": "number", "default": 0}},
        elements={
            "a": {"type": "operator", "operations": [{"add": "n", "by": 1}], "next": "b"},
            "b": {
                "type": "decision",
                "outcomes": [
                    {"next": "a", "when": {"left": {"ref": "n"}, "op": "lt", "right": 3}},
                    {"next": "done"},
                ],
            },
            "done": {"type": "end"},
        },
    )
    assert parse_flow(doc).elements["b"].outcomes[0].next == "a"


def test_operands_outside_render_trees_are_literal_objects() -> None:
    doc = flow_doc(
        values={"meta": {"type": "object"}},
        elements={
            "a": {
                "type": "operator",
                "operations": [{"set": "meta", "to": {"ref": "meta", "extra": 1}}],
                "next": "done",
            },
            "done": {"type": "end"},
        },
    )
    operand = parse_flow(doc).elements["a"].operations[0].operand
    assert operand is not None and operand.kind == "literal"
    assert operand.value == {"ref": "meta", "extra": 1}


def test_the_parsed_flow_keeps_the_document_and_its_hash() -> None:
    doc = every_element_flow()
    first, second = parse_flow(doc), parse_flow(json.loads(json.dumps(doc)))
    assert first.definition == doc
    assert first.sha256 == second.sha256 and len(first.sha256) == 64


def valid_variants() -> Iterator[dict[str, Any]]:
    yield every_element_flow()
    yield from (doc for doc in EXAMPLES.values() if not plugin_types(doc))


def test_valid_documents_give_a_flow_not_an_error() -> None:
    for doc in valid_variants():
        assert isinstance(parse_flow(doc), Flow)
