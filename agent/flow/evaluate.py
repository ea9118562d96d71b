"""Evaluation inside a run: operands, rules, render trees, operations, waits.

Pure functions over a run's values (the *scope*).  A problem a flow author
must see becomes ``RunFault``; the engine turns it into the element's fault
path or a failed run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, DecimalException
from typing import Any

from . import values as V
from .commands import ConnectorResult
from .expressions import ExpressionError
from .model import Element, Flow, Operand, Operation, Rule
from .rules import RuleError, compare


class RunFault(Exception):
    """An element cannot go on; the run takes its fault path or fails."""


def operate(flow: Flow, op: Operation, values: dict[str, Any]) -> None:
    """Apply one operation to a run's values (in place)."""
    root = str(op.path[0])
    spec = flow.values[root]
    nested = len(op.path) > 1
    if op.op == "clear":
        new = None if nested else V.empty(spec.type)
    else:
        argument = operand(op.operand, values) if op.operand else None
        if op.op == "set":
            new = argument
        elif op.op == "append":
            current = get_path(values, op.path)
            if current is not None and not isinstance(current, list):
                raise RunFault(f"cannot append to '{op.target}': it is {V.describe(current)}")
            new = [*(current or []), V.normalize(argument)]
        else:
            new = arithmetic(op, get_path(values, op.path), argument)
    if nested:
        set_path(values, op.path, V.normalize(new), op.target)
        return
    try:
        values[root] = V.check_assignable(spec.type, new)
    except V.ConversionError as exc:
        raise RunFault(f"cannot set '{root}' ({spec.type}): {exc}") from None


def arithmetic(op: Operation, current: Any, by: Any) -> Decimal:
    if current is None:
        current = Decimal(0)
    if not V.is_number(current):
        raise RunFault(f"cannot {op.op} on '{op.target}': it is {V.describe(current)}")
    if not V.is_number(by):
        raise RunFault(f"cannot {op.op} '{op.target}' by {V.describe(by)}")
    a, b = V.to_decimal(current), V.to_decimal(by)
    try:
        if op.op == "add":
            return a + b
        if op.op == "subtract":
            return a - b
        if op.op == "multiply":
            return a * b
        if b == 0:
            raise RunFault(f"division by zero in '{op.target}'")
        return a / b
    except DecimalException as exc:
        raise RunFault(f"arithmetic error on '{op.target}': {type(exc).__name__}") from None


def until(element: Element, scope: Mapping[str, Any], now: datetime) -> datetime:
    if element.seconds is not None:
        seconds = operand(element.seconds, scope)
        if not V.is_number(seconds) or seconds < 0:
            raise RunFault(
                f"wait seconds must be a number of at least 0, got {V.describe(seconds)}"
            )
        try:
            return now + timedelta(seconds=float(seconds))
        except OverflowError:
            raise RunFault(
                f"wait seconds {V.format_number(V.to_decimal(seconds))} is too far away"
            ) from None
    until = operand(element.until, scope) if element.until else None
    if isinstance(until, str):
        try:
            until = V.parse_datetime(until)
        except V.ConversionError as exc:
            raise RunFault(f"wait until: {exc}") from None
    if not isinstance(until, datetime):
        raise RunFault(f"wait until must give a datetime, got {V.describe(until)}")
    return until


def rule(node: Rule, scope: Mapping[str, Any]) -> bool:
    if node.op == "all":
        return all(rule(r, scope) for r in node.rules)
    if node.op == "any":
        return any(rule(r, scope) for r in node.rules)
    if node.op == "not":
        return not rule(node.rules[0], scope)
    assert node.left is not None and node.right is not None
    left = operand(node.left, scope)
    right = operand(node.right, scope)
    try:
        return compare(node.op, left, right)
    except RuleError as exc:
        raise RunFault(str(exc)) from None


def operand(node: Operand | None, scope: Mapping[str, Any]) -> Any:
    if node is None:
        return None
    kind = node.kind
    if kind == "literal":
        return node.value
    if kind == "ref":
        return get_path(scope, node.value)
    assert node.compiled is not None
    result = call(node.compiled, scope)
    return result if kind == "template" else V.normalize(result)


def text(node: Operand, scope: Mapping[str, Any]) -> str:
    value = operand(node, scope)
    return value if isinstance(value, str) else str(V.to_plain(value))


def call(compiled: Any, scope: Mapping[str, Any]) -> Any:
    try:
        return compiled(scope)
    except ExpressionError as exc:
        raise RunFault(f"{compiled.source!r}: {exc}") from None


def render(tree: Any, scope: Mapping[str, Any]) -> Any:
    if isinstance(tree, Operand):
        return operand(tree, scope)
    if isinstance(tree, dict):
        return {k: render(v, scope) for k, v in tree.items()}
    if isinstance(tree, list):
        return [render(v, scope) for v in tree]
    return tree


def get_path(scope: Mapping[str, Any], path: Iterable[str | int]) -> Any:
    current: Any = scope
    for part in path:
        if isinstance(part, int) and isinstance(current, list):
            current = current[part] if 0 <= part < len(current) else None
        elif isinstance(current, Mapping):
            current = current.get(str(part))
        else:
            return None
    return current


def set_path(values: dict[str, Any], path: tuple[str | int, ...], new: Any, target: str) -> None:
    root = str(path[0])
    container = values.get(root)
    if container is None:
        container = [] if isinstance(path[1], int) else {}
    else:
        container = V.normalize(container)  # copy: never write through a shared object
    values[root] = container
    for i, part in enumerate(path[1:], start=1):
        last = i == len(path) - 1
        if isinstance(part, int):
            if not isinstance(container, list) or not 0 <= part < len(container):
                raise RunFault(f"cannot set '{target}': index {part} is out of range")
            if last:
                container[part] = new
            else:
                container = container[part]
        else:
            if not isinstance(container, dict):
                raise RunFault(f"cannot set '{target}': {V.describe(container)} has no keys")
            if last:
                container[part] = new
            else:
                child = container.get(part)
                if child is None:
                    child = [] if isinstance(path[i + 1], int) else {}
                    container[part] = child
                container = child


def response_part(result: ConnectorResult, source: str) -> Any:
    if source == "status":
        return result.status
    if source.startswith("headers."):
        return result.headers.get(source[len("headers.") :].lower())
    rest = source[len("body") :]
    parts: list[str | int] = []
    for chunk in rest.replace("[", ".[").split("."):
        if not chunk:
            continue
        parts.append(int(chunk[1:-1]) if chunk.startswith("[") else chunk)
    return get_path({"b": result.body}, ["b", *parts])


def redacted(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***").replace(repr(secret)[1:-1], "***")
    return text


def scrubbed(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` (plain JSON-like data) with every secret inside its strings replaced by ``***``.

    A connector's answer can echo what it was sent (a debugging endpoint, an
    error page quoting the Authorization header); what it returns becomes the
    run's values, so secrets are taken out before they are kept.
    """
    if not secrets:
        return value
    if isinstance(value, str):
        return redacted(value, secrets)
    if isinstance(value, Mapping):
        return {scrubbed(k, secrets): scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrubbed(item, secrets) for item in value]
    return value


def header_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return V.format_number(value)
    if value is None:
        return ""
    return str(V.to_plain(value))


def tree_names(tree: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(tree, Operand):
        if tree.kind == "ref":
            names.add(str(tree.value[0]))
        elif tree.compiled is not None:
            names |= tree.compiled.names
    elif isinstance(tree, dict):
        for v in tree.values():
            names |= tree_names(v)
    elif isinstance(tree, list):
        for v in tree:
            names |= tree_names(v)
    return names
