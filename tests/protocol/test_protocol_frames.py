"""The frame codec: round trips, every refusal, and fuzzing with Hypothesis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import AgentError
from agent.protocol import frames
from agent.protocol.errors import (
    FrameTooDeep,
    FrameTooLarge,
    InvalidFields,
    LocalProtocolError,
    MalformedFrame,
    ProtocolError,
    RemoteProtocolError,
    UnknownType,
    UnsupportedVersion,
)
from agent.protocol.frames import (
    Ack,
    Activate,
    Auth,
    CancelRun,
    ErrorFrame,
    Event,
    Events,
    FlowAck,
    FlowPush,
    FlowRef,
    Hello,
    Inventory,
    Message,
    RunAck,
    SealedSecret,
    SecretAck,
    SecretPush,
    StartRun,
    Status,
    Welcome,
    decode,
    encode,
    nesting_depth,
)

EXAMPLES: list[Message] = [
    Hello(nonce="bm9uY2U=", server_time="2026-01-01T00:00:00+00:00", region="eu-1", heartbeat=20),
    Auth(agent_id="ag_1", signature="c2ln", agent_version="0.1.0", facts={"os": "linux"}),
    Welcome(session_id="s_1", tenant="acme", heartbeat=20.0, last_seq=7),
    Inventory(flows=(FlowRef(id="hello", version=2, sha256="ab" * 32),)),
    FlowPush(
        tenant="acme",
        id="hello",
        version=3,
        definition={"format": "flow/v1", "id": "hello", "name": "Grüße ✓"},
        sha256="cd" * 32,
        signature="c2ln",
        activate=True,
    ),
    Activate(tenant="acme", id="hello", version=2, serial=5, signature="c2ln"),
    FlowAck(id="hello", version=3, ok=False, reason="signature"),
    FlowAck(id="hello", version=3, ok=True),
    StartRun(run_id="r_1", flow="hello", inputs={"amount": 5}, version=None),
    RunAck(run_id="r_1", accepted=False, reason="draining"),
    CancelRun(run_id="r_1"),
    Events(
        events=(
            Event(seq=1, kind="run.started", run_id="r_1", at="2026-01-01T00:00:00Z", data={}),
            Event(seq=2, kind="flow.rejected", at="2026-01-01T00:00:01Z", data={"id": "x"}),
        )
    ),
    Ack(seq=0),
    Status(
        agent_version="0.1.0",
        host={"hostname": "h"},
        flows=(),
        runs={"running": 1},
        outbox_depth=0,
    ),
    SecretPush(
        name="api.token",
        sealed=SealedSecret(v=1, alg="X25519-HKDF-SHA256-A256GCM", epk="ZQ", nonce="bg", ct="Yw"),
    ),
    SecretAck(name="api.token", ok=False, reason="sealed_invalid"),
    ErrorFrame(code="bad_field", message="nope"),
]


def test_every_message_type_has_an_example() -> None:
    assert {type(m) for m in EXAMPLES} == set(frames.MESSAGE_TYPES.values())


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    text = encode(msg)
    doc = json.loads(text)
    assert doc["v"] == 1
    assert doc["type"] == msg.TYPE
    assert decode(text) == msg


def test_encoding_is_compact_and_keeps_unicode() -> None:
    text = encode(EXAMPLES[4])
    assert "Grüße ✓" in text
    assert ": " not in text and ", " not in text


def test_nullable_fields_may_be_omitted_on_the_wire() -> None:
    msg = decode('{"v":1,"type":"run_ack","run_id":"r","accepted":true}')
    assert msg == RunAck(run_id="r", accepted=True, reason=None)


def frame(**fields: Any) -> str:
    return json.dumps({"v": 1, **fields}, ensure_ascii=False)


@pytest.mark.parametrize(
    ("text", "error", "code"),
    [
        ('{"v":2,"type":"ack","seq":1}', UnsupportedVersion, "bad_version"),
        ('{"v":true,"type":"ack","seq":1}', UnsupportedVersion, "bad_version"),
        ('{"type":"ack","seq":1}', UnsupportedVersion, "bad_version"),
        (frame(type="launch_missiles"), UnknownType, "unknown_type"),
        (frame(type=["ack"]), UnknownType, "unknown_type"),
        (frame(type="ack"), InvalidFields, "bad_field"),
        (frame(type="ack", seq=1, extra=2), InvalidFields, "bad_field"),
        (frame(type="ack", seq="1"), InvalidFields, "bad_field"),
        (frame(type="ack", seq=True), InvalidFields, "bad_field"),
        (frame(type="ack", seq=1.5), InvalidFields, "bad_field"),
        (frame(type="ack", seq=-1), InvalidFields, "bad_field"),
        (frame(type="flow_ack", id="x", version=1, ok=1), InvalidFields, "bad_field"),
        (frame(type="inventory", flows=[{"id": "x", "version": 1}]), InvalidFields, "bad_field"),
        (frame(type="inventory", flows={"id": "x"}), InvalidFields, "bad_field"),
        (frame(type="start_run", run_id="r", flow="f", inputs=[]), InvalidFields, "bad_field"),
        (
            frame(
                type="status", agent_version="1", host={}, flows=[], runs={"a": "b"}, outbox_depth=0
            ),
            InvalidFields,
            "bad_field",
        ),
        (
            frame(
                type="events",
                events=[
                    {"seq": 2, "kind": "k", "at": "t", "data": {}},
                    {"seq": 2, "kind": "k", "at": "t", "data": {}},
                ],
            ),
            InvalidFields,
            "bad_field",
        ),
        (
            frame(type="hello", nonce="n", server_time="t", region="r", heartbeat=0),
            InvalidFields,
            "bad_field",
        ),
        ('{"v":1,"type":"ack","seq":1,"seq":2}', MalformedFrame, "malformed"),
        (
            '{"v":1,"type":"hello","nonce":"n","server_time":"t","region":"r","heartbeat":NaN}',
            MalformedFrame,
            "malformed",
        ),
        ("[1,2]", MalformedFrame, "malformed"),
        ("", MalformedFrame, "malformed"),
        ('{"v":1,', MalformedFrame, "malformed"),
        ('{"v":1,"type":"error","code":"\\ud800","message":"m"}', MalformedFrame, "malformed"),
        ("9" * 5000, MalformedFrame, "malformed"),
    ],
)
def test_refusals(text: str, error: type[RemoteProtocolError], code: str) -> None:
    with pytest.raises(error) as info:
        decode(text)
    assert info.value.code == code
    assert isinstance(info.value, ProtocolError)
    assert isinstance(info.value, AgentError)
    assert info.value.close_code is None


def test_non_text_frames_are_refused() -> None:
    with pytest.raises(MalformedFrame):
        decode(b'{"v":1}')


def test_size_limit_counts_utf8_bytes() -> None:
    text = frame(type="error", code="x", message="é" * 600)
    assert len(text) < 1000 < len(text.encode())
    with pytest.raises(FrameTooLarge):
        decode(text, max_bytes=1000)
    assert isinstance(decode(text, max_bytes=2000), ErrorFrame)


def test_default_size_limit_is_four_mebibytes() -> None:
    big = frame(type="error", code="x", message="a" * (4 * 1024 * 1024))
    with pytest.raises(FrameTooLarge):
        decode(big)


def test_depth_limit_without_recursion() -> None:
    # Far deeper than Python's recursion limit: must be refused by the scan.
    with pytest.raises(FrameTooDeep):
        decode("[" * 200_000 + "]" * 200_000)
    nested: Any = {}
    for _ in range(63):
        nested = {"a": nested}
    ok = frame(type="start_run", run_id="r", flow="f", inputs=nested)
    assert nesting_depth(ok) == 65
    with pytest.raises(FrameTooDeep):
        decode(ok)
    assert isinstance(decode(ok, max_depth=65), StartRun)


def test_brackets_inside_strings_do_not_count() -> None:
    text = frame(type="error", code="x", message='[[[[{{{{ \\" ]]' * 100)
    assert nesting_depth(text) == 1
    assert isinstance(decode(text, max_depth=1), ErrorFrame)


def test_encode_refuses_invalid_messages() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Ack(seq="1"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode(Ack(seq=-5))
    with pytest.raises(LocalProtocolError):
        encode(StartRun(run_id="r", flow="f", inputs={"x": object()}))
    with pytest.raises(LocalProtocolError):
        encode(ErrorFrame(code="x", message="a" * 100), max_bytes=50)
    with pytest.raises(LocalProtocolError):
        encode(Message())


def test_messages_are_frozen() -> None:
    msg = Ack(seq=1)
    with pytest.raises(AttributeError):
        msg.seq = 2  # type: ignore[misc]


# -- fuzzing ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
type_names = st.sampled_from([*frames.MESSAGE_TYPES, "nope", ""])
field_names = st.sampled_from(
    [
        "seq",
        "events",
        "flows",
        "id",
        "version",
        "run_id",
        "inputs",
        "kind",
        "data",
        "at",
        "nonce",
        "code",
        "message",
        "heartbeat",
        "facts",
        "ok",
        "reason",
        "x",
    ]
)


def _decode_only_protocol_errors(text: str) -> None:
    try:
        msg = decode(text, max_bytes=10_000, max_depth=8)
    except RemoteProtocolError as exc:
        assert exc.code
        assert exc.message
        return
    assert isinstance(msg, Message)
    # Whatever decodes must encode again to an equal message.
    assert decode(encode(msg)) == msg


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    _decode_only_protocol_errors(text)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=2) | json_values,
    type_names,
    st.dictionaries(field_names, json_values, max_size=6),
)
def test_fuzz_json_frames(version: Any, kind: str, body: dict[str, Any]) -> None:
    _decode_only_protocol_errors(json.dumps({"v": version, "type": kind, **body}))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_arbitrary_json(doc: Any) -> None:
    _decode_only_protocol_errors(json.dumps(doc))


@settings(max_examples=50)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=5),
            st.sampled_from(sorted(frames.EVENT_KINDS)),
            st.none() | st.text(min_size=1, max_size=10),
            st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        ),
        max_size=5,
    )
)
def test_events_round_trip(items: list[tuple[int, str, str | None, dict[str, Any]]]) -> None:
    seq = 0
    events = []
    for step, kind, run_id, data in items:
        seq += step
        events.append(
            Event(seq=seq, kind=kind, run_id=run_id, at="2026-01-01T00:00:00Z", data=data)
        )
    msg = Events(events=tuple(events))
    assert decode(encode(msg)) == msg
