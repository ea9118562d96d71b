"""Direct evaluation of the common, simple expressions and templates.

Building a Jinja context costs tens of microseconds per evaluation, more than
the arithmetic of a typical ``amount * 1.2 + fee``.  For expressions made only
of names, constants, arithmetic, comparisons, boolean logic, attribute and
item access and literals, this module builds a tree of closures from the
(already sandbox-rewritten) Jinja AST that does what Jinja's generated code
does, through the same environment hooks: ``ENV.call_binop`` for the
intercepted operators (the size limits), ``ENV.getattr``/``ENV.getitem``
(the sandbox's attribute checks), ``ENV.undefined`` for missing names and
``ENV.finalize`` for output.  Anything else (filters, tests, calls, loops)
returns ``None`` and the caller uses Jinja itself.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

Fn = Callable[[Mapping[str, Any]], Any]

_BINOPS: Final = {
    nodes.Add: "+",
    nodes.Sub: "-",
    nodes.Mul: "*",
    nodes.Div: "/",
    nodes.FloorDiv: "//",
    nodes.Mod: "%",
    nodes.Pow: "**",
}
_PLAIN: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
_COMPARE: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gteq": operator.ge,
    "lt": operator.lt,
    "lteq": operator.le,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


class _Builder:
    def __init__(self, env: SandboxedEnvironment) -> None:
        self.env = env

    def build(self, node: nodes.Node) -> Fn | None:
        if isinstance(node, nodes.Const):
            value = node.value
            return lambda scope: value
        if isinstance(node, nodes.Name):
            return self._name(node.name)
        if isinstance(node, nodes.Call):
            return self._decimal(node)
        if isinstance(node, nodes.And | nodes.Or):  # BinExpr subclasses: test them first
            return self._logic(node)
        if isinstance(node, nodes.BinExpr):
            return self._binop(node)
        if isinstance(node, nodes.Neg | nodes.Pos | nodes.Not):
            return self._unary(node)
        if isinstance(node, nodes.Compare):
            return self._compare(node)
        if isinstance(node, nodes.Getattr):
            return self._getattr(node)
        if isinstance(node, nodes.Getitem):
            return self._getitem(node)
        if isinstance(node, nodes.CondExpr):
            return self._cond(node)
        if isinstance(node, nodes.List | nodes.Tuple):
            return self._sequence(node)
        if isinstance(node, nodes.Dict):
            return self._dict(node)
        return None

    def _name(self, name: str) -> Fn | None:
        if name in self.env.globals:
            return None  # a global (range, ...) unless the scope has it: leave to Jinja
        undefined = self.env.undefined

        def resolve(scope: Mapping[str, Any]) -> Any:
            try:
                return scope[name]
            except KeyError:
                return undefined(name=name)

        return resolve

    def _decimal(self, node: nodes.Call) -> Fn | None:
        # Only the float-literal rewrite: __decimal__('1.2') is a constant.
        if (
            isinstance(node.node, nodes.Name)
            and node.node.name == "__decimal__"
            and len(node.args) == 1
            and isinstance(node.args[0], nodes.Const)
            and not node.kwargs
            and node.dyn_args is None
            and node.dyn_kwargs is None
        ):
            value = Decimal(node.args[0].value)
            return lambda scope: value
        return None

    def _binop(self, node: nodes.BinExpr) -> Fn | None:
        symbol = _BINOPS.get(type(node))
        left, right = self.build(node.left), self.build(node.right)
        if symbol is None or left is None or right is None:
            return None
        if symbol in self.env.intercepted_binops:
            call = self.env.call_binop
            return lambda scope: call(None, symbol, left(scope), right(scope))  # type: ignore[arg-type]
        plain = _PLAIN[symbol]
        return lambda scope: plain(left(scope), right(scope))

    def _unary(self, node: nodes.UnaryExpr) -> Fn | None:
        inner = self.build(node.node)
        if inner is None:
            return None
        if isinstance(node, nodes.Not):
            return lambda scope: not inner(scope)
        if isinstance(node, nodes.Neg):
            return lambda scope: -inner(scope)
        return lambda scope: +inner(scope)

    def _logic(self, node: nodes.And | nodes.Or) -> Fn | None:
        left, right = self.build(node.left), self.build(node.right)
        if left is None or right is None:
            return None
        if isinstance(node, nodes.And):
            return lambda scope: left(scope) and right(scope)
        return lambda scope: left(scope) or right(scope)

    def _compare(self, node: nodes.Compare) -> Fn | None:
        first = self.build(node.expr)
        steps: list[tuple[Callable[[Any, Any], Any], Fn]] = []
        for operand in node.ops:
            fn, right = _COMPARE.get(operand.op), self.build(operand.expr)
            if fn is None or right is None:
                return None
            steps.append((fn, right))
        if first is None:
            return None

        def compare(scope: Mapping[str, Any]) -> Any:
            left = first(scope)
            result: Any = True
            for fn, right in steps:
                value = right(scope)
                result = fn(left, value)
                if not result:
                    return result
                left = value
            return result

        return compare

    def _getattr(self, node: nodes.Getattr) -> Fn | None:
        target = self.build(node.node)
        if target is None:
            return None
        getattr_, attr = self.env.getattr, node.attr
        return lambda scope: getattr_(target(scope), attr)

    def _getitem(self, node: nodes.Getitem) -> Fn | None:
        if isinstance(node.arg, nodes.Slice):
            return None
        target, key = self.build(node.node), self.build(node.arg)
        if target is None or key is None:
            return None
        getitem = self.env.getitem
        return lambda scope: getitem(target(scope), key(scope))

    def _cond(self, node: nodes.CondExpr) -> Fn | None:
        if node.expr2 is None:
            return None
        test, yes, no = self.build(node.test), self.build(node.expr1), self.build(node.expr2)
        if test is None or yes is None or no is None:
            return None
        return lambda scope: yes(scope) if test(scope) else no(scope)

    def _sequence(self, node: nodes.List | nodes.Tuple) -> Fn | None:
        items = [self.build(item) for item in node.items]
        if any(item is None for item in items):
            return None
        built: list[Fn] = [item for item in items if item is not None]
        if isinstance(node, nodes.Tuple):
            return lambda scope: tuple(item(scope) for item in built)
        return lambda scope: [item(scope) for item in built]

    def _dict(self, node: nodes.Dict) -> Fn | None:
        pairs = [(self.build(p.key), self.build(p.value)) for p in node.items]
        built: list[tuple[Fn, Fn]] = []
        for key, value in pairs:
            if key is None or value is None:
                return None
            built.append((key, value))
        return lambda scope: {k(scope): v(scope) for k, v in built}


def fast_expression(env: SandboxedEnvironment, expr: nodes.Expr) -> Fn | None:
    """A closure computing ``expr`` like Jinja would, or None to use Jinja."""
    return _Builder(env).build(expr)


def fast_template(
    env: SandboxedEnvironment, tree: nodes.Template, max_output: int
) -> Callable[[Mapping[str, Any]], str] | None:
    """Text and ``{{ expression }}`` outputs only; None for anything else."""
    builder = _Builder(env)
    parts: list[str | Fn] = []
    for statement in tree.body:
        if not isinstance(statement, nodes.Output):
            return None
        for child in statement.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(child.data)
                continue
            fn = builder.build(child)
            if fn is None:
                return None
            parts.append(fn)
    finalize = env.finalize
    assert finalize is not None

    def render(scope: Mapping[str, Any]) -> str:
        out = [part if isinstance(part, str) else str(finalize(part(scope))) for part in parts]
        text = "".join(out)
        if len(text) > max_output:
            from .expressions import ExpressionError

            raise ExpressionError(f"the template renders more than {max_output} characters")
        return text

    return render
