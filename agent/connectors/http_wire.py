"""Pure helpers of the http connector: JSON with exact decimals, query values,
redaction, Retry-After.  No I/O, so they are tested without sockets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, quote_plus

from agent.errors import OperationError

# Deeper than any body a flow renders; bounds recursion on hostile input.
MAX_JSON_DEPTH = 200
# Beyond this many digits a number is written with an exponent instead.
MAX_PLAIN_DIGITS = 1000

try:  # the C version when the interpreter has it
    from json.encoder import c_encode_basestring as _encode_str  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    from json.encoder import py_encode_basestring as _encode_str


class JsonBodyError(OperationError):
    """A request body or query value that cannot be sent as JSON."""


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON in which a Decimal is a number in plain decimal form.

    ``json.dumps`` cannot write a Decimal as a number without going through
    float, which would lose the exactness the flow format promises.
    """
    parts: list[str] = []
    _encode(value, parts, 0)
    return "".join(parts).encode()


def _encode(value: Any, out: list[str], depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise JsonBodyError(f"the body is nested more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, str):
        out.append(_encode_str(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float | Decimal):
        out.append(plain_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise JsonBodyError(f"the body has a non-text key {key!r}")
            if index:
                out.append(",")
            out.append(_encode_str(key))
            out.append(":")
            _encode(item, out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out, depth + 1)
        out.append("]")
    elif isinstance(value, datetime | date | time):
        out.append(_encode_str(value.isoformat()))
    else:
        raise JsonBodyError(f"the body holds a {type(value).__name__}, which JSON cannot carry")


def plain_number(value: float | Decimal) -> str:
    """A finite number in plain decimal form: ``1E+3`` is ``1000``."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JsonBodyError(f"{value} is not a JSON number")
        value = Decimal(repr(value))
    elif not value.is_finite():
        raise JsonBodyError(f"{value} is not a JSON number")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if value.adjusted() > MAX_PLAIN_DIGITS or exponent < -MAX_PLAIN_DIGITS:
        # Plain form would be absurdly long (1E+999999999 is a billion digits);
        # the exponent form is still an exact JSON number.
        return str(value)
    return format(value, "f")


def decode_json(raw: bytes) -> Any:
    """Parse a response body: empty is None, fractions become Decimal.

    Raises ValueError (with a short reason, never the body) when it is no JSON.
    """
    if not raw.strip():
        return None
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def query_pairs(query: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rendered query values as text pairs; None is left out, a list repeats its key."""
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        items = value if isinstance(value, list | tuple) else (value,)
        for item in items:
            if item is not None:
                pairs.append((str(key), query_text(item)))
    return pairs


def query_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float | Decimal):
        return plain_number(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return encode_json(value).decode()


class Redactor:
    """Replaces secret strings, raw and URL-encoded, by ``***``."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms.update((secret, quote(secret, safe=""), quote(secret), quote_plus(secret)))
        # Longest first, so a secret containing another is hidden whole.
        self._secrets = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date), or None.

    ``now`` is the wall clock (seconds since the epoch) for the date form.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(min(int(text), 10**9))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def describe_size(size: int) -> str:
    """``10485760`` is "10 MiB": how a limit reads in a message."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"
