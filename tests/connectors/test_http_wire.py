"""Pure helpers of the http connector: JSON with exact decimals, query text,
redaction, Retry-After."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.connectors.http_wire import (
    MAX_JSON_DEPTH,
    JsonBodyError,
    Redactor,
    decode_json,
    describe_size,
    encode_json,
    query_pairs,
    retry_after_seconds,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60)
@given(json_values)
def test_encoded_json_parses_back_to_the_same_exact_value(value: Any) -> None:
    encoded = encode_json(value)

    assert json.loads(encoded, parse_float=Decimal) == value


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_a_decimal_is_written_without_an_exponent(value: Decimal) -> None:
    encoded = encode_json(value).decode()

    assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", encoded)
    assert Decimal(encoded) == value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0.10"), "0.10"),
        (Decimal("1E+3"), "1000"),
        (Decimal("1.5E-7"), "0.00000015"),
        (Decimal("-0"), "-0"),
        (1e-07, "0.0000001"),
        (1e16, "10000000000000000"),
        (0.1 + 0.2, "0.30000000000000004"),
        (Decimal("1E+999999999"), "1E+999999999"),  # plain form would be a billion digits
        (Decimal("-2.5E-1001"), "-2.5E-1001"),
    ],
)
def test_numbers_are_written_in_plain_decimal_form(value: Any, text: str) -> None:
    assert encode_json(value) == text.encode()
    assert query_pairs({"n": value}) == [("n", text)]


def test_text_is_utf8_and_structures_are_compact() -> None:
    value = {"who": 'Zoë "Z"', "when": datetime(2026, 1, 2, 3, 4, tzinfo=UTC), "l": (1, None)}

    assert encode_json(value) == (
        '{"who":"Zoë \\"Z\\"","when":"2026-01-02T03:04:00+00:00","l":[1,null]}'.encode()
    )


def test_a_body_nested_too_deeply_is_refused() -> None:
    value: Any = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        value = [value]

    with pytest.raises(JsonBodyError, match="nested more than"):
        encode_json(value)


def test_query_values_render_as_text() -> None:
    pairs = query_pairs(
        {"yes": True, "no": False, "n": 3, "s": "a&b", "none": None, "l": ["x", 2], "o": {"k": 1}}
    )

    assert pairs == [
        ("yes", "true"),
        ("no", "false"),
        ("n", "3"),
        ("s", "a&b"),
        ("l", "x"),
        ("l", "2"),
        ("o", '{"k":1}'),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", None),
        (b"  \r\n", None),
        (b"null", None),
        (b'{"a": 1.50, "b": 2}', {"a": Decimal("1.50"), "b": 2}),
        (b"[1e3]", [Decimal("1E+3")]),
        ('{"t": "Zoë"}'.encode(), {"t": "Zoë"}),
    ],
)
def test_response_bodies_decode_with_exact_decimals(raw: bytes, expected: Any) -> None:
    assert decode_json(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"<html>", "Expecting value"),
        (b"NaN", "NaN is not a JSON value"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON value"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'"\xff"', "not UTF-8 text"),
    ],
)
def test_bodies_that_are_not_json_give_a_short_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        decode_json(raw)

    assert len(str(caught.value)) < 200


def test_redaction_hides_raw_and_url_encoded_forms_longest_first() -> None:
    redact = Redactor(["p@ss word/1", "p@ss", ""])

    assert redact("a p@ss word/1 b") == "a *** b"
    assert redact("/x/p%40ss%20word%2F1/y") == "/x/***/y"
    assert redact("q=p%40ss+word%2F1") == "q=***"
    assert redact("just p@ss") == "just ***"
    assert Redactor([])("untouched") == "untouched"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("-3", None),
        ("1.5", None),
        ("soon", None),
        ("Thu, 01 Jan 2026 00:00:40 GMT", 40.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),  # in the past
        ("9" * 40, 1e9),
    ],
)
def test_retry_after_reads_seconds_and_dates(header: str | None, seconds: float | None) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

    assert retry_after_seconds(header, now=now) == seconds


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (10 * 1024 * 1024, "10 MiB"),
        (256 * 1024, "256 KiB"),
        (1 << 30, "1 GiB"),
        (1000, "1000 bytes"),
    ],
)
def test_limits_read_like_people_write_them(size: int, text: str) -> None:
    assert describe_size(size) == text
