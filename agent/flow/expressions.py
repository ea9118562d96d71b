"""Expressions and templates in Jinja2's immutable sandbox.

Sources are compiled once, when a flow version is parsed, and the compiled
objects live on the parsed ``Flow``.  Float literals are rewritten into
Decimals at compile time so that ``0.1 + 0.2 == 0.3`` holds in expressions
too.  The sandbox refuses internals (``__class__`` and friends) and we add
limits for the operators that can exhaust memory or CPU (``*`` on sequences,
``**`` with large exponents).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, DecimalException
from typing import Any, Final

from jinja2 import ChainableUndefined, TemplateError, meta, nodes
from jinja2.environment import Template, TemplateExpression
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .values import format_number, to_decimal

MAX_SEQUENCE: Final = 1_000_000  # items or characters a `*` may produce
MAX_EXPONENT: Final = 1_000
MAX_OUTPUT: Final = 1_000_000  # characters a template may render


class ExpressionError(Exception):
    """A template or expression failed to compile or to evaluate."""


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format_number(value)
    if isinstance(value, float):
        return format_number(to_decimal(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _size(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 1


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "/", "//", "%"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Jinja returns a quiet Undefined here; a blocked internal must be a fault.
        raise SecurityError(f"access to {attribute!r} is blocked")

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, count in ((left, right), (right, left)):
                repeats = isinstance(seq, str | list | tuple) and isinstance(count, int | Decimal)
                if repeats and _size(seq) * int(count) > MAX_SEQUENCE:
                    raise SecurityError("a repetition this large is not allowed")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(right, int | Decimal) and abs(Decimal(right)) > MAX_EXPONENT:
                raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
            return operator.pow(left, right)
        if isinstance(right, int | Decimal) and right == 0:
            raise ExpressionError("division by zero")
        return super().call_binop(context, operator_, left, right)


def _decimal_literal(text: str) -> Decimal:
    return Decimal(text)


ENV: Final = _Environment(
    autoescape=False,
    undefined=ChainableUndefined,
    finalize=_finalize,
    keep_trailing_newline=True,
)
ENV.globals.clear()
ENV.globals["__decimal__"] = _decimal_literal
ENV.globals.update({"range": ENV.globals.get("range", range)})
ALLOWED_GLOBALS: Final = frozenset({"range", "__decimal__"})


class _FloatsToDecimals(NodeTransformer):
    """``1.2`` in a source becomes ``__decimal__('1.2')``."""

    def visit_Const(self, node: nodes.Const) -> nodes.Node:
        if isinstance(node.value, float):
            call = nodes.Call(
                nodes.Name("__decimal__", "load"), [nodes.Const(repr(node.value))], [], None, None
            )
            call.set_lineno(node.lineno or 1)
            call.set_environment(ENV)
            return call
        return node


def _names(tree: nodes.Template) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(tree)) - ALLOWED_GLOBALS


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled template or expression and the value names it reads."""

    source: str
    names: frozenset[str]
    _call: Callable[[Mapping[str, Any]], Any]

    def __call__(self, scope: Mapping[str, Any]) -> Any:
        try:
            return self._call(scope)
        except ExpressionError:
            raise
        except SecurityError as exc:
            raise ExpressionError(f"not allowed: {exc}") from None
        except (TemplateError, TypeError, ValueError, ArithmeticError, DecimalException) as exc:
            raise ExpressionError(_explain(exc)) from None
        except (AttributeError, LookupError, RecursionError, OverflowError) as exc:
            raise ExpressionError(_explain(exc)) from None


def _explain(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ZeroDivisionError) or "DivisionByZero" in type(exc).__name__:
        return "division by zero"
    if isinstance(exc, DecimalException):
        return f"arithmetic error ({type(exc).__name__})"
    if isinstance(exc, TypeError) and "unsupported operand" in text:
        return f"bad types for an operator: {text.split(':', 1)[-1].strip()}"
    return text


def compile_expression(source: str) -> Compiled:
    try:
        parser = Parser(ENV, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            raise ExpressionError(
                f"unexpected {parser.stream.current.value!r} after the expression"
            )
        body = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expr)], lineno=1)
        tree = _FloatsToDecimals().visit(body)
        tree.set_environment(ENV)
        template = ENV.from_string(tree)
    except TemplateError as exc:
        raise ExpressionError(f"invalid expression: {exc}") from None
    evaluate = TemplateExpression(template, undefined_to_none=True)
    return Compiled(source, _names(tree), lambda scope: evaluate(dict(scope)))


def compile_template(source: str) -> Compiled:
    try:
        tree = _FloatsToDecimals().visit(ENV.parse(source))
        tree.set_environment(ENV)
        template: Template = ENV.from_string(tree)
    except TemplateError as exc:
        raise ExpressionError(f"invalid template: {exc}") from None

    def render(scope: Mapping[str, Any]) -> str:
        out: list[str] = []
        size = 0
        for chunk in template.generate(dict(scope)):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise ExpressionError(f"the template renders more than {MAX_OUTPUT} characters")
            out.append(chunk)
        return "".join(out)

    return Compiled(source, _names(tree), render)


def is_template(text: str) -> bool:
    return "{{" in text


def names_in(compiled: Iterable[Compiled]) -> frozenset[str]:
    found: set[str] = set()
    for item in compiled:
        found |= item.names
    return frozenset(found)
