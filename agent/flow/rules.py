"""Comparison operators of flow/v1 rules.

Strings compare ignoring case (orderings too); ``eq`` between different
non-null kinds is false; ordering and text operators on incomparable kinds
raise ``RuleError`` (a run fault), never a silent false.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from .values import ConversionError, describe, is_empty, is_number, parse_datetime

OPS: Final = frozenset(
    {"eq", "ne", "gt", "gte", "lt", "lte", "contains", "starts_with", "ends_with", "is_empty", "in"}
)


class RuleError(Exception):
    """A rule cannot be evaluated on these operands."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return "other"


def _coerce_datetimes(left: Any, right: Any) -> tuple[Any, Any]:
    """When one side is a datetime, an ISO 8601 string on the other is one too."""
    try:
        if isinstance(left, datetime) and isinstance(right, str):
            return left, parse_datetime(right)
        if isinstance(right, datetime) and isinstance(left, str):
            return parse_datetime(left), right
    except ConversionError:
        pass
    return left, right


def equal(left: Any, right: Any) -> bool:
    left, right = _coerce_datetimes(left, right)
    kl, kr = _kind(left), _kind(right)
    if kl != kr:
        return False
    if kl == "string":
        return bool(left.casefold() == right.casefold())
    if kl == "number":
        return (
            Decimal(str(left)) == Decimal(str(right)) if isinstance(left, float) else left == right
        )
    if kl == "list":
        return len(left) == len(right) and all(
            equal(a, b) for a, b in zip(left, right, strict=True)
        )
    if kl == "object":
        return left.keys() == right.keys() and all(equal(left[k], right[k]) for k in left)
    return bool(left == right)


def _ordered(op: str, left: Any, right: Any) -> tuple[Any, Any]:
    left, right = _coerce_datetimes(left, right)
    kl, kr = _kind(left), _kind(right)
    if kl == kr and kl in ("number", "datetime"):
        return left, right
    if kl == kr == "string":
        return left.casefold(), right.casefold()
    raise RuleError(f"'{op}' cannot compare {describe(left)} with {describe(right)}")


def _text(op: str, left: Any, right: Any) -> tuple[str, str]:
    if isinstance(left, str) and isinstance(right, str):
        return left.casefold(), right.casefold()
    raise RuleError(f"'{op}' needs two strings, got {describe(left)} and {describe(right)}")


def _contains(op: str, container: Any, item: Any) -> bool:
    if isinstance(container, list | tuple):
        return any(equal(member, item) for member in container)
    if isinstance(container, str) and isinstance(item, str):
        return item.casefold() in container.casefold()
    raise RuleError(
        f"'{op}' needs a string or a list to look in, got {describe(container)} "
        f"and {describe(item)}"
    )


def _is_empty(left: Any, right: Any) -> bool:
    if not isinstance(right, bool):
        raise RuleError(f"'is_empty' takes true or false on the right, got {describe(right)}")
    return is_empty(left) == right


def _gt(l_: Any, r: Any) -> bool:
    a, b = _ordered("gt", l_, r)
    return bool(a > b)


def _gte(l_: Any, r: Any) -> bool:
    a, b = _ordered("gte", l_, r)
    return bool(a >= b)


def _lt(l_: Any, r: Any) -> bool:
    a, b = _ordered("lt", l_, r)
    return bool(a < b)


def _lte(l_: Any, r: Any) -> bool:
    a, b = _ordered("lte", l_, r)
    return bool(a <= b)


def _starts(l_: Any, r: Any) -> bool:
    a, b = _text("starts_with", l_, r)
    return a.startswith(b)


def _ends(l_: Any, r: Any) -> bool:
    a, b = _text("ends_with", l_, r)
    return a.endswith(b)


_TABLE: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": equal,
    "ne": lambda l_, r: not equal(l_, r),
    "gt": _gt,
    "gte": _gte,
    "lt": _lt,
    "lte": _lte,
    "contains": lambda l_, r: _contains("contains", l_, r),
    "in": lambda l_, r: _contains("in", r, l_),
    "starts_with": _starts,
    "ends_with": _ends,
    "is_empty": _is_empty,
}


def compare(op: str, left: Any, right: Any) -> bool:
    return _TABLE[op](left, right)
