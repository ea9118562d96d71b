"""SQL text and values for the ``sql`` connector: named parameters, result values.

``compile_statement`` finds the ``:name`` parameters of a statement, skipping
string literals, quoted identifiers, comments, PostgreSQL dollar quotes and
``::`` casts, and rewrites them for each driver (``?`` for SQLite, ``$n`` for
PostgreSQL).  Values never enter the text: the drivers bind them.

``plain`` turns a driver's result value into flow data: numbers exact
(``Decimal``), datetimes ISO 8601 text, bytes base64, containers walked.
"""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOLLAR_TAG: Final = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


class StatementError(ValueError):
    """The SQL text cannot be used as a statement (what and where)."""


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str  # as written in the flow
    names: tuple[str, ...]  # distinct parameter names, in order of first use
    qmark: str  # "?" placeholders, for SQLite
    qmark_order: tuple[str, ...]  # the name bound to each "?", in order
    numbered: str  # "$1".."$n" placeholders (one per name), for PostgreSQL

    def qmark_values(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.qmark_order]

    def numbered_values(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool = False) -> int:
    """Index after the literal that opens at ``i`` (doubled quotes escape one)."""
    j = i + 1
    while j < len(sql):
        c = sql[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < len(sql) and sql[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    raise StatementError(f"unterminated {quote} quote starting at character {i + 1}")


def compile_statement(sql: str) -> Statement:
    if not sql.strip():
        raise StatementError("the statement is empty")
    qmark: list[str] = []
    numbered: list[str] = []
    names: list[str] = []
    order: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        start = i
        if c in "'\"":
            i = _skip_quoted(sql, i, c)
        elif c in "eE" and sql.startswith("'", i + 1) and (i == 0 or not _word(sql[i - 1])):
            i = _skip_quoted(sql, i + 1, "'", backslash=True)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise StatementError(f"unterminated /* comment starting at character {i + 1}")
            i = end + 2
        elif c == "$" and (i == 0 or not _word(sql[i - 1])):
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is not None:
                end = sql.find(tag.group(0), tag.end())
                if end < 0:
                    raise StatementError(f"unterminated {tag.group(0)} quote")
                i = end + len(tag.group(0))
            elif i + 1 < n and sql[i + 1].isdigit():
                raise StatementError("write parameters as :name, not $1")
            else:
                i += 1
        elif c == "?":
            raise StatementError("write parameters as :name, not ?")
        elif c == ":" and sql.startswith("::", i):
            i += 2  # a PostgreSQL cast
        elif c == ":" and (match := _NAME.match(sql, i + 1)) is not None:
            name = match.group(0)
            if name not in names:
                names.append(name)
            order.append(name)
            qmark.append("?")
            numbered.append(f"${names.index(name) + 1}")
            i = match.end()
            continue
        else:
            i += 1
        qmark.append(sql[start:i])
        numbered.append(sql[start:i])
    return Statement(sql, tuple(names), "".join(qmark), tuple(order), "".join(numbered))


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


def plain(value: Any) -> Any:
    """A result value as flow data (exact numbers, ISO 8601 datetimes)."""
    if value is None or isinstance(value, bool | int | str | Decimal):
        if isinstance(value, Decimal) and not value.is_finite():
            return str(value)  # NaN and infinities have no JSON number
        return value
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return Decimal(str(value.total_seconds()))
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)  # ranges, network addresses, ...


def json_loads(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def json_dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


# -- binding flow values for PostgreSQL's declared parameter types ------------------

_INTEGERS: Final = frozenset({"int2", "int4", "int8", "oid"})
_FLOATS: Final = frozenset({"float4", "float8"})
_TEXTS: Final = frozenset({"text", "varchar", "bpchar", "name", "char", "citext"})


def pg_value(type_name: str, value: Any) -> Any:
    """Bind a flow value (plain JSON data) to a PostgreSQL parameter type.

    Flow data has no dates or exact decimals on the wire to the connector
    (they arrive as ISO text and JSON numbers), while asyncpg wants Python
    objects of the parameter's type; ``ValueError`` for a value that does not fit.
    """
    if value is None:
        return None
    if type_name.startswith("_") and isinstance(value, list):
        return [pg_value(type_name[1:], item) for item in value]
    if type_name in _INTEGERS:
        if isinstance(value, bool):
            raise ValueError("expected a whole number, got a boolean")
        number = Decimal(str(value)) if isinstance(value, int | float | str) else value
        if not isinstance(number, Decimal) or number != number.to_integral_value():
            raise ValueError(f"expected a whole number, got {value!r}")
        return int(number)
    if type_name == "numeric":
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(value, float):
            return Decimal(repr(value))
        return Decimal(str(value)) if isinstance(value, int | str) else value
    if type_name in _FLOATS and isinstance(value, int | str | Decimal):
        return float(value)
    if type_name in _TEXTS and not isinstance(value, str):
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | Decimal):
            return format(Decimal(repr(value) if isinstance(value, float) else value), "f")
        return json_dumps(value)
    if type_name == "bool" and isinstance(value, str):
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"expected true or false, got {value!r}")
    if type_name in ("timestamptz", "timestamp") and isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if type_name == "timestamp" and parsed.tzinfo is not None:
            # A column without a zone holds UTC, as flow datetimes are.
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        elif type_name == "timestamptz" and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed
    if type_name == "date" and isinstance(value, str):
        return date.fromisoformat(value[:10]) if "T" in value else date.fromisoformat(value)
    if type_name in ("time", "timetz") and isinstance(value, str):
        return time.fromisoformat(value)
    if type_name == "uuid" and isinstance(value, str):
        return uuid.UUID(value)
    return value


def sqlite_value(value: Any) -> Any:
    """Bind a flow value for SQLite: scalars as they are, containers as JSON."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping | list | tuple):
        return json_dumps(value)
    return value
