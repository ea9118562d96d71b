"""Value types of flow/v1: conversion, assignment checks, empties, JSON.

Numbers are ``decimal.Decimal`` inside a run (exact: 0.1 + 0.2 == 0.3) and
plain JSON numbers outside.  Datetimes are timezone-aware ``datetime``
objects inside and ISO 8601 strings with an offset outside.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import simplejson

TYPES: Final = frozenset({"string", "number", "boolean", "datetime", "object", "list", "secret"})
ACCESS: Final = frozenset({"private", "input", "output", "input_output"})
INPUT_ACCESS: Final = frozenset({"input", "input_output"})
OUTPUT_ACCESS: Final = frozenset({"output", "input_output"})

# Numbers of more digits than this are refused on the way in: Python writes
# no integer of more than 4,300 digits, and nobody means such a number.
MAX_DIGITS: Final = 4000

_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})


class ConversionError(ValueError):
    """A value cannot be converted to (or is not of) the declared type."""


def describe(value: Any) -> str:
    """The kind of a value, as a person reads it in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | Decimal | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, datetime):
        return "a datetime"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def is_number(value: Any) -> bool:
    return isinstance(value, int | Decimal | float) and not isinstance(value, bool)


def to_decimal(value: Any) -> Decimal:
    """A number as a Decimal; floats go through their shortest repr."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConversionError(f"{value!r} is not a finite number")
        return Decimal(repr(value))
    raise ConversionError(f"expected a number, got {describe(value)}")


def parse_datetime(text: str) -> datetime:
    """ISO 8601; a value without an offset is UTC."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConversionError(f"{text!r} is not an ISO 8601 datetime") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _number(raw: Any) -> Decimal:
    if isinstance(raw, bool):
        raise ConversionError("expected a number, got a boolean")
    if isinstance(raw, str):
        try:
            result = Decimal(raw.strip())
        except InvalidOperation:
            raise ConversionError(f"{raw!r} is not a number") from None
    else:
        result = to_decimal(raw)
    if not result.is_finite():
        raise ConversionError(f"{raw!r} is not a finite number")
    if result and result.adjusted() >= MAX_DIGITS:
        raise ConversionError(f"a number of more than {MAX_DIGITS} digits is too large")
    return result


def _string(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if is_number(raw):
        return format_number(to_decimal(raw))
    raise ConversionError(f"expected a string, got {describe(raw)}")


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        folded = raw.strip().lower()
        if folded in _TRUE:
            return True
        if folded in _FALSE:
            return False
        raise ConversionError(f"{raw!r} is not a boolean (use true or false)")
    if is_number(raw) and raw in (0, 1):
        return bool(raw)
    raise ConversionError(f"expected a boolean, got {describe(raw)}")


def _datetime(raw: Any) -> datetime:
    if isinstance(raw, datetime):
        return raw if raw.tzinfo is not None else raw.replace(tzinfo=UTC)
    if isinstance(raw, str):
        return parse_datetime(raw)
    raise ConversionError(f"expected an ISO 8601 datetime, got {describe(raw)}")


def _json_container(raw: Any, kind: type, name: str) -> Any:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw, parse_float=Decimal)
        except ValueError:
            raise ConversionError(f"expected {name} as JSON, got text that is not JSON") from None
    if kind is list and isinstance(raw, tuple):
        raw = list(raw)
    if kind is dict and isinstance(raw, Mapping) and not isinstance(raw, dict):
        raw = dict(raw)
    if not isinstance(raw, kind):
        raise ConversionError(f"expected {name}, got {describe(raw)}")
    return normalize(raw)


def convert(type_: str, raw: Any) -> Any:
    """Convert an input, a page field or a connector output to ``type_``."""
    if raw is None:
        return None
    if type_ == "string":
        return _string(raw)
    if type_ == "number":
        return _number(raw)
    if type_ == "boolean":
        return _boolean(raw)
    if type_ == "datetime":
        return _datetime(raw)
    if type_ == "object":
        return _json_container(raw, dict, "an object")
    if type_ == "list":
        return _json_container(raw, list, "a list")
    raise ConversionError(f"a {type_} value cannot be supplied")


def check_assignable(type_: str, value: Any) -> Any:
    """Operations convert nothing: the value must already have the type.

    Returns the value in its canonical in-run form (ints become Decimals, a
    datetime target also takes an ISO 8601 string).
    """
    if value is None:
        return None
    if type_ == "string" and isinstance(value, str):
        return str(value)
    if type_ == "number" and is_number(value):
        return to_decimal(value)
    if type_ == "boolean" and isinstance(value, bool):
        return value
    if type_ == "datetime" and isinstance(value, datetime | str):
        return _datetime(value)
    if type_ == "object" and isinstance(value, Mapping):
        return normalize(dict(value))
    if type_ == "list" and isinstance(value, list | tuple):
        return normalize(list(value))
    raise ConversionError(f"expected {_article(type_)}, got {describe(value)}")


def _article(type_: str) -> str:
    return "an object" if type_ == "object" else f"a {type_}"


def empty(type_: str) -> Any:
    return {
        "string": "",
        "number": Decimal(0),
        "boolean": False,
        "object": {},
        "list": [],
    }.get(type_)


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | tuple | Mapping) and len(value) == 0)


def normalize(value: Any) -> Any:
    """Canonical in-run form of nested data: floats become Decimals."""
    if isinstance(value, float):
        return to_decimal(value)
    if isinstance(value, Mapping):
        return {str(k): normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    return value


def format_number(value: Decimal) -> str:
    """Plain decimal form, never an exponent: 1E+2 -> '100', 0.50 -> '0.50'.

    ``format`` alone does it; ``quantize`` would raise for more than 28 digits.
    """
    return format(value, "f")


def plain_number(value: Decimal) -> int | float:
    """A run's number as a JSON number: whole numbers exact, others the nearest double.

    JSON has no infinity: a number beyond a double's range is written whole
    (a digit string), and past ``MAX_DIGITS`` digits (which no conversion lets
    in, but arithmetic can reach) as the largest double of its sign.
    """
    whole = value == value.to_integral_value()
    if whole and abs(value) < 10**18:
        return int(value)
    if not whole:
        number = float(value)
        if math.isfinite(number):
            return number
    if value.adjusted() < MAX_DIGITS:
        return int(value)
    return math.copysign(sys.float_info.max, value)


def to_plain(value: Any) -> Any:
    """In-run value to plain JSON data (Decimal -> int/float, datetime -> ISO)."""
    if isinstance(value, Decimal):
        return plain_number(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not run data")


def dumps(value: Any) -> str:
    """Compact JSON of in-run data (Decimals and datetimes included).

    Decimals are written digit for digit, not through a float: a stored run
    must resume with exactly the numbers it had (1/3 keeps its 28 digits,
    2.50 stays 2.50).  simplejson does that in C (``use_decimal``); the
    standard library can only write floats.
    """
    try:
        text: str = simplejson.dumps(
            value,
            use_decimal=True,
            default=_default,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        return text
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot store run data: {exc}") from None


def loads(text: str) -> Any:
    """JSON to in-run data: non-integral numbers become Decimals."""
    return json.loads(text, parse_float=Decimal)


def revive(type_: str, value: Any) -> Any:
    """Restore a stored value of a declared type (numbers, datetimes)."""
    if value is None:
        return None
    if type_ == "number":
        return to_decimal(value)
    if type_ == "datetime":
        return parse_datetime(value)
    return value
