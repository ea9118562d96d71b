"""The direct evaluator agrees with Jinja on every expression it takes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from jinja2 import nodes
from jinja2.environment import TemplateExpression
from jinja2.parser import Parser

from agent.flow.expressions import (
    ENV,
    Compiled,
    ExpressionError,
    _FloatsToDecimals,
    _to_data,
    compile_expression,
    compile_template,
)
from agent.flow.fastpath import fast_expression

SCOPE: dict[str, Any] = {
    "amount": Decimal("700.50"),
    "fee": 3,
    "name": "Ann",
    "flag": True,
    "none": None,
    "lines": [1, Decimal("2.5"), "x"],
    "customer": {"name": "ACME", "tier": {"level": 2}},
    "due": datetime(2026, 1, 1, tzinfo=UTC),
    "empty": "",
}

EXPRESSIONS = [
    "amount * 1.2 + fee",
    "0.1 + 0.2",
    "1 / 3",
    "7 // 2",
    "7 % 3",
    "2 ** 10",
    "-amount",
    "+fee",
    "not flag",
    "flag and fee",
    "none or name",
    "amount > 500",
    "1 < fee < 5",
    "fee == 3.0",
    "name != 'ann'",
    "'x' in lines",
    "'y' not in lines",
    "customer.name",
    "customer.tier.level",
    "customer['tier']['level']",
    "lines[1]",
    "lines[9]",
    "missing",
    "missing.deep.path",
    "customer.nope",
    "name if flag else fee",
    "[amount, fee, name]",
    "(1, 2)",
    "{'a': fee, 'b': [name]}",
    "due",
    "empty or 'dflt'",
    "amount - fee * 2",
    "lines[0] + fee",
    "name * 3",
    "'a' + name",
    # errors, which must be the same errors
    "amount + name",
    "1 / 0",
    "missing + 1",
    "name.__class__",
    "lines.append",
    "2 ** 5000",
    "'a' * 10000000",
    "fee > name",
    # beyond the fast path: filters, calls, tests, slices (Jinja does these)
    "lines | length",
    "range(3) | list",
    "name is string",
    "lines[0:2]",
    "name ~ fee",
]


def _jinja(source: str) -> Compiled:
    parser = Parser(ENV, source, state="variable")
    expr = parser.parse_expression()
    body = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expr)], lineno=1)
    tree = _FloatsToDecimals().visit(body)
    tree.set_environment(ENV)
    evaluate = TemplateExpression(ENV.from_string(tree), undefined_to_none=True)
    return Compiled(source, frozenset(), lambda scope: _to_data(evaluate(dict(scope))))


def _outcome(compiled: Compiled) -> tuple[str, Any]:
    try:
        return "value", compiled(SCOPE)
    except ExpressionError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("source", EXPRESSIONS)
def test_fast_and_jinja_agree(source: str) -> None:
    assert _outcome(compile_expression(source)) == _outcome(_jinja(source))


def test_the_fast_path_covers_the_common_shapes() -> None:
    covered = []
    for source in EXPRESSIONS:
        parser = Parser(ENV, source, state="variable")
        tree = _FloatsToDecimals().visit(parser.parse_expression())
        covered.append(fast_expression(ENV, tree) is not None)
    assert sum(covered) >= len(EXPRESSIONS) - 6
    assert not covered[-1] and not covered[-2]  # `~` and slices go to Jinja


@pytest.mark.parametrize(
    "source",
    [
        "Hello {{ name }}, you owe {{ amount * 1.2 }}",
        "{{ none }}|{{ flag }}|{{ due }}",
        "{{ missing.x }}!",
        "plain text",
        "{{ customer.name | lower }}",
        "{% for l in lines %}{{ l }},{% endfor %}",
        "{{ 1e2 }} {{ 1 / 3 }}",
    ],
)
def test_templates_agree(source: str) -> None:
    fast = compile_template(source)(SCOPE)
    tree = _FloatsToDecimals().visit(ENV.parse(source))
    tree.set_environment(ENV)
    assert fast == ENV.from_string(tree).render(SCOPE)
