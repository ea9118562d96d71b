"""Named parameters and value conversion of the sql connector (no database needed)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.connectors.sql_text import (
    StatementError,
    compile_statement,
    pg_value,
    plain,
    sqlite_value,
)


def test_parameters_become_driver_placeholders() -> None:
    s = compile_statement("SELECT * FROM t WHERE a = :a AND b > :b OR a < :a")
    assert s.names == ("a", "b")
    assert s.qmark == "SELECT * FROM t WHERE a = ? AND b > ? OR a < ?"
    assert s.qmark_order == ("a", "b", "a")
    assert s.numbered == "SELECT * FROM t WHERE a = $1 AND b > $2 OR a < $1"
    assert s.qmark_values({"a": 1, "b": 2}) == [1, 2, 1]
    assert s.numbered_values({"a": 1, "b": 2}) == [1, 2]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ':x' AS t",
        "SELECT 'it''s :x' AS t",
        'SELECT 1 AS ":x"',
        "SELECT 1 -- :x\n",
        "SELECT /* :x */ 1",
        "SELECT $$ :x $$",
        "SELECT $tag$ it's :x $tag$",
        "SELECT E'\\' :x'",
        "SELECT '1'::int",
        "SELECT now()::date::text",
    ],
)
def test_no_parameter_inside_literals_comments_quotes_or_casts(sql: str) -> None:
    s = compile_statement(sql)
    assert s.names == ()
    assert s.qmark == sql and s.numbered == sql


def test_a_cast_right_after_a_parameter() -> None:
    s = compile_statement("SELECT :n::int + 1")
    assert s.names == ("n",)
    assert s.numbered == "SELECT $1::int + 1"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM t WHERE a = ?", "not ?"),
        ("SELECT * FROM t WHERE a = $1", "not \\$1"),
        ("SELECT 'open", "unterminated"),
        ("SELECT /* open", "unterminated"),
        ("SELECT $q$ open", "unterminated"),
        ("   ", "empty"),
    ],
)
def test_positional_parameters_and_broken_text_are_refused(sql: str, message: str) -> None:
    with pytest.raises(StatementError, match=message):
        compile_statement(sql)


@given(st.text(alphabet=st.characters(blacklist_characters="'"), max_size=40))
def test_text_inside_a_string_literal_is_never_a_parameter(inner: str) -> None:
    s = compile_statement(f"SELECT '{inner}' AS x WHERE 1 = :one")
    assert s.names == ("one",)
    assert s.qmark == f"SELECT '{inner}' AS x WHERE 1 = ?"


def test_plain_keeps_numbers_exact_and_writes_datetimes_as_iso() -> None:
    assert plain(0.1) == Decimal("0.1")
    assert plain(Decimal("12345678901234567890.123456789")) == Decimal(
        "12345678901234567890.123456789"
    )
    assert plain(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05+00:00"
    assert plain(date(2026, 1, 2)) == "2026-01-02"
    assert plain(time(3, 4)) == "03:04:00"
    assert plain(timedelta(minutes=90)) == Decimal("5400.0")
    assert plain(b"\x00\xff") == "AP8="
    assert plain(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert plain(float("nan")) == "nan"
    assert plain({"a": [1.5, None, True]}) == {"a": [Decimal("1.5"), None, True]}


def test_flow_values_bind_to_postgres_parameter_types() -> None:
    assert pg_value("int4", 7) == 7
    assert pg_value("int8", "12") == 12
    assert pg_value("numeric", 0.1) == Decimal("0.1")
    assert pg_value("float8", Decimal("1.5")) == 1.5
    assert pg_value("text", 42) == "42"
    assert pg_value("text", 0.5) == "0.5"
    assert pg_value("text", True) == "true"
    assert pg_value("bool", "TRUE") is True
    assert pg_value("timestamptz", "2026-01-02T03:04:05+02:00") == datetime(
        2026, 1, 2, 1, 4, 5, tzinfo=UTC
    )
    assert pg_value("timestamptz", "2026-01-02T03:04:05") == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    assert pg_value("timestamp", "2026-01-02T03:04:05+02:00") == datetime(2026, 1, 2, 1, 4, 5)
    assert pg_value("date", "2026-01-02T00:00:00+00:00") == date(2026, 1, 2)
    assert pg_value("_int4", [1, "2"]) == [1, 2]
    assert pg_value("uuid", "00000000-0000-0000-0000-000000000001") == uuid.UUID(int=1)
    assert pg_value("jsonb", {"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="whole number"):
        pg_value("int4", 1.5)
    with pytest.raises(ValueError, match="boolean"):
        pg_value("int4", True)


def test_flow_values_bind_for_sqlite() -> None:
    assert sqlite_value(True) == 1
    assert sqlite_value(Decimal("2")) == 2
    assert sqlite_value({"a": [1]}) == '{"a":[1]}'
    assert sqlite_value("x") == "x"
