"""Expressions and templates in Jinja2's immutable sandbox.

Sources are compiled once, when a flow version is parsed, and the compiled
objects live on the parsed ``Flow``.  Float literals are rewritten into
Decimals at compile time so that ``0.1 + 0.2 == 0.3`` holds in expressions
too.  The sandbox refuses internals (``__class__`` and friends) and we add
limits for the operators and filters that can exhaust memory or CPU (``*``,
``+`` and ``~`` on sequences, ``**`` with large results, ``center`` and
friends with huge widths, loop turns of one render).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, DecimalException
from typing import Any, Final

import simplejson
from jinja2 import ChainableUndefined, TemplateError, Undefined, meta, nodes, pass_context
from jinja2.environment import Template, TemplateExpression
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.visitor import NodeTransformer

from .fastpath import fast_expression, fast_template
from .values import format_number, to_decimal

MAX_SEQUENCE: Final = 1_000_000  # items or characters a `*` may produce
MAX_EXPONENT: Final = 1_000
MAX_POWER_BITS: Final = 10_000  # an integer power may not grow beyond this (about 3,000 digits)
MAX_OUTPUT: Final = 1_000_000  # characters a template may render
MAX_ITERATIONS: Final = 1_000_000  # loop turns of one render, nested loops together
# The turns left to the render in progress; loops share one budget, so two
# nested range(100000) loops stop after a million turns instead of 10**10.
_TURNS: ContextVar[list[int]] = ContextVar("flow_template_turns")
_BIG_FORMAT: Final = re.compile(r"\d{7,}")  # a width or precision of a million or more


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
    if isinstance(value, list | tuple | Mapping):
        return _json_text(value)
    return value


def _json_text(value: Any) -> str:
    """A list or an object in a template: JSON, its numbers in plain form like ``{{ }}``.

    Python's ``repr`` (``[Decimal('1.5')]``) is no text for a person or a peer.
    """
    return str(simplejson.dumps(_jsonable(value), ensure_ascii=False, use_decimal=False))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return simplejson.RawJSON(format_number(value))
    if isinstance(value, float):
        return simplejson.RawJSON(format_number(to_decimal(value)))
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, Undefined):
        return None
    if isinstance(value, str | bool | int):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _size(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 1


def _limit(size: int, what: str) -> None:
    if size > MAX_SEQUENCE:
        raise SecurityError(f"{what} this large is not allowed")


def _is_count(value: Any) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def _loop(iterable: Iterable[Any]) -> Iterator[Any]:
    turns = _TURNS.get(None)
    for item in iterable:
        if turns is not None:
            turns[0] -= 1
            if turns[0] < 0:
                raise SecurityError(f"loops of more than {MAX_ITERATIONS} turns are not allowed")
        yield item


def _concat(*parts: Any) -> str:
    """``a ~ b``: numbers in plain form like ``{{ }}``, and a bounded result."""
    texts = [str(_finalize(part)) for part in parts]
    _limit(sum(len(t) for t in texts), "a text")
    return "".join(texts)


def _estimate(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse, before it runs, a filter call whose result would exhaust memory."""
    value = args[0] if args else None
    if name == "center":
        width = args[1] if len(args) > 1 else kwargs.get("width", 0)
        if _is_count(width):
            _limit(int(width), "a width")
    elif name == "indent" and isinstance(value, str):
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        pad = int(width) if _is_count(width) else _size(width)
        _limit(len(value) + (value.count("\n") + 1) * pad, "an indented text")
    elif name == "slice":
        slices = args[1] if len(args) > 1 else kwargs.get("slices", 0)
        if _is_count(slices):
            _limit(int(slices), "a slice count")
    elif name == "format" and isinstance(value, str) and _BIG_FORMAT.search(value):
        raise SecurityError("a format width or precision this large is not allowed")
    elif name == "replace" and isinstance(value, str) and len(args) > 2:
        old, new = str(args[1]), str(args[2])
        hits = value.count(old) if old else len(value) + 1
        _limit(len(value) + hits * max(len(new) - len(old), 0), "a replaced text")
    elif name == "join" and isinstance(value, list | tuple | str):
        sep = args[1] if len(args) > 1 else kwargs.get("d", "")
        _limit(_size(value) * (_size(sep) + 1), "a joined text")


def _guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter so that it runs only with the run's data, never at compile time.

    Jinja folds filters on constants while compiling; marking every filter as
    taking the context stops that, so a flow document cannot make the
    validator itself build a huge string.  The size estimate runs first.
    """
    passes = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context
    def run(context: Context, *args: Any, **kwargs: Any) -> Any:
        _estimate(name, args, kwargs)
        if passes == "context":
            return func(context, *args, **kwargs)
        if passes == "eval_context":
            return func(context.eval_ctx, *args, **kwargs)
        if passes == "environment":
            return func(context.environment, *args, **kwargs)
        return func(*args, **kwargs)

    return run


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "/", "//", "%"})

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
        if operator_ == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _limit(_size(left) + _size(right), "a sequence")
            return operator.add(left, right)
        if operator_ == "**":
            if isinstance(right, int | Decimal) and abs(Decimal(right)) > MAX_EXPONENT:
                raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
            # A bounded exponent is not enough: (9 ** 1000) ** 1000 has a
            # million digits and one more power takes minutes.
            if (
                isinstance(left, int)
                and isinstance(right, int | Decimal)
                and right > 0
                and abs(left).bit_length() * int(right) > MAX_POWER_BITS
            ):
                raise SecurityError("a power this large is not allowed")
            return operator.pow(left, right)
        if isinstance(right, int | Decimal) and right == 0:
            raise ExpressionError("division by zero")
        if operator_ == "/" and _exact(left) and _exact(right):
            # Numbers are exact decimals: 1 / 3 must not go through float.
            return Decimal(left) / Decimal(right)
        return super().call_binop(context, operator_, left, right)


def _exact(value: Any) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


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
ENV.globals["__concat__"] = _concat
ENV.globals["__loop__"] = _loop
# The sandbox's range, which refuses huge ranges; the builtin one does not.
ENV.globals["range"] = safe_range
# ``x | string`` gives the text ``{{ x }}`` shows: plain numbers, true/false, JSON.
ENV.filters["string"] = lambda value: str(_finalize(value))
ENV.filters.update({name: _guarded_filter(name, f) for name, f in ENV.filters.items()})
ALLOWED_GLOBALS: Final = frozenset({"range", "__decimal__", "__concat__", "__loop__"})


class _FloatsToDecimals(NodeTransformer):
    """``1.2`` in a source becomes ``__decimal__('1.2')``; ``a ~ b`` calls ``__concat__``."""

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        parts = [self.visit(part) for part in node.nodes]
        call = nodes.Call(nodes.Name("__concat__", "load"), parts, [], None, None)
        call.set_lineno(node.lineno or 1)
        call.set_environment(ENV)
        return call

    def visit_For(self, node: nodes.For) -> nodes.Node:
        visited = self.generic_visit(node)
        assert isinstance(visited, nodes.For)
        call = nodes.Call(nodes.Name("__loop__", "load"), [visited.iter], [], None, None)
        call.set_lineno(node.lineno or 1)
        call.set_environment(ENV)
        visited.iter = call
        return visited

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
        turns = _TURNS.set([MAX_ITERATIONS])
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
        finally:
            _TURNS.reset(turns)


def _to_data(value: Any) -> Any:
    """An expression's result as run data: JSON-like, no Jinja objects inside."""
    if isinstance(value, Undefined):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        # NaN and infinity are no numbers of a run (nor of JSON): say so here,
        # where the message can name the expression.
        raise ExpressionError(f"the result {value!r} is not a finite number")
    if value is None or isinstance(value, bool | int | float | Decimal | datetime):
        return value
    if isinstance(value, str):
        return str(value)  # Markup and other subclasses become plain text
    if isinstance(value, list | tuple):
        return [_to_data(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_data(v) for k, v in value.items()}
    raise ExpressionError(
        f"the result is a {type(value).__name__}, not data (a filter like |list may help)"
    )


# Compiling Python from a template can fail past Jinja's own checks: too many
# nested loops, integer literals too long to convert, too deep a nesting.
_COMPILE_ERRORS: Final = (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError)


def _explain(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, ValueError) and "integer string conversion" in text:
        return "a number has too many digits"
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
    except _COMPILE_ERRORS as exc:
        raise ExpressionError(f"invalid expression: {_explain(exc)}") from None
    names = _names(tree)
    statement = tree.body[0]
    assert isinstance(statement, nodes.Assign)
    fast = fast_expression(ENV, statement.node)  # type: ignore[arg-type]
    if fast is not None:
        return Compiled(source, names, lambda scope: _to_data(fast(scope)))
    evaluate = TemplateExpression(template, undefined_to_none=True)
    return Compiled(source, names, lambda scope: _to_data(evaluate(dict(scope))))


def compile_template(source: str) -> Compiled:
    try:
        tree = _FloatsToDecimals().visit(ENV.parse(source))
        tree.set_environment(ENV)
        template: Template = ENV.from_string(tree)
    except TemplateError as exc:
        raise ExpressionError(f"invalid template: {exc}") from None
    except _COMPILE_ERRORS as exc:
        raise ExpressionError(f"invalid template: {_explain(exc)}") from None

    fast = fast_template(ENV, tree, MAX_OUTPUT)
    if fast is not None:
        return Compiled(source, _names(tree), fast)

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
