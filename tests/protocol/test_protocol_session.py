"""The session state machine: handshake, direction rules, refusals, close codes."""

from __future__ import annotations

import pytest

from agent.protocol.errors import LocalProtocolError, RemoteProtocolError, UnexpectedFrame
from agent.protocol.frames import (
    MESSAGE_TYPES,
    Ack,
    Auth,
    ErrorFrame,
    Events,
    Hello,
    Inventory,
    StartRun,
    Welcome,
    error_frame,
)
from agent.protocol.session import (
    SENDERS,
    TRANSITIONS,
    CloseCode,
    Role,
    Session,
    SessionState,
    classify_close,
)

HELLO = Hello(nonce="bm9uY2U=", server_time="2026-01-01T00:00:00Z", region="eu", heartbeat=20)
AUTH = Auth(agent_id="ag_1", signature="c2ln", agent_version="0.1", facts={})
WELCOME = Welcome(session_id="s", tenant="acme", heartbeat=20, last_seq=0)


def handshake() -> tuple[Session, Session]:
    cp = Session(role=Role.CONTROL_PLANE)
    agent = Session(role=Role.AGENT)
    assert agent.receive(cp.send(HELLO)) == HELLO
    assert cp.state is agent.state is SessionState.AUTHENTICATING
    assert cp.receive(agent.send(AUTH)) == AUTH
    assert agent.receive(cp.send(WELCOME)) == WELCOME
    assert cp.state is agent.state is SessionState.READY
    return cp, agent


def test_handshake_reaches_ready_on_both_ends() -> None:
    cp, agent = handshake()
    assert cp.receive(agent.send(Inventory(flows=()))) == Inventory(flows=())
    assert agent.receive(cp.send(Ack(seq=3))) == Ack(seq=3)


def test_every_type_has_a_sender_and_a_transition() -> None:
    assert set(SENDERS) == set(MESSAGE_TYPES)
    for kind in MESSAGE_TYPES:
        assert any(k == kind for _, k in TRANSITIONS), kind


def test_illegal_sends_raise_local_errors() -> None:
    agent = Session(role=Role.AGENT)
    with pytest.raises(LocalProtocolError, match="not allowed while connecting"):
        agent.send(AUTH)
    cp = Session(role=Role.CONTROL_PLANE)
    with pytest.raises(LocalProtocolError, match="only the agent"):
        cp.send(AUTH)
    cp.send(HELLO)
    with pytest.raises(LocalProtocolError, match="'auth' must come first"):
        cp.send(WELCOME)
    with pytest.raises(LocalProtocolError):
        cp.send(StartRun(run_id="r", flow="f", inputs={}))
    ready_cp, ready_agent = handshake()
    with pytest.raises(LocalProtocolError, match="only the control plane"):
        ready_agent.send(Ack(seq=1))
    with pytest.raises(LocalProtocolError):
        ready_cp.send(HELLO)


def test_auth_only_once() -> None:
    cp = Session(role=Role.CONTROL_PLANE)
    agent = Session(role=Role.AGENT)
    agent.receive(cp.send(HELLO))
    text = agent.send(AUTH)
    cp.receive(text)
    with pytest.raises(UnexpectedFrame) as info:
        cp.receive(text)
    assert info.value.close_code == CloseCode.PROTOCOL_ERROR


def test_bad_frame_during_handshake_closes_with_4400() -> None:
    cp = Session(role=Role.CONTROL_PLANE)
    cp.send(HELLO)
    with pytest.raises(RemoteProtocolError) as info:
        cp.receive("not json")
    assert info.value.close_code == 4400


def test_wrong_direction_from_peer_is_refused_but_link_survives() -> None:
    cp, agent = handshake()
    # An agent pretending to be the control plane: an ``ack`` sent to the cp.
    with pytest.raises(UnexpectedFrame) as info:
        cp.receive('{"v":1,"type":"ack","seq":1}')
    assert info.value.close_code is None
    reply = cp.send(error_frame(info.value))
    assert agent.receive(reply) == ErrorFrame(code="unexpected", message=info.value.message)
    assert cp.state is SessionState.READY


def test_more_than_twenty_refused_in_a_row_closes() -> None:
    cp, _agent = handshake()
    for _ in range(20):
        with pytest.raises(RemoteProtocolError) as info:
            cp.receive("{")
        assert info.value.close_code is None
    with pytest.raises(RemoteProtocolError) as info:
        cp.receive("{")
    assert info.value.close_code == CloseCode.PROTOCOL_ERROR


def test_a_good_frame_resets_the_refusal_count() -> None:
    cp, agent = handshake()
    for _ in range(15):
        with pytest.raises(RemoteProtocolError):
            cp.receive("{")
    cp.receive(agent.send(Events(events=())))
    assert cp.refused_in_a_row == 0
    for _ in range(20):
        with pytest.raises(RemoteProtocolError) as info:
            cp.receive("{")
        assert info.value.close_code is None


def test_close_from_any_state() -> None:
    for build in (lambda: Session(role=Role.AGENT), lambda: handshake()[1]):
        session = build()
        info = session.close(4403)
        assert session.state is SessionState.CLOSED
        assert info.terminal
        with pytest.raises(LocalProtocolError):
            session.send(Inventory(flows=()))
        with pytest.raises(LocalProtocolError):
            session.receive('{"v":1,"type":"ack","seq":1}')


@pytest.mark.parametrize(
    ("code", "terminal"),
    [
        (4401, True),
        (4403, True),
        (4400, False),
        (4409, False),
        (1012, False),
        (1000, False),
        (1006, False),
        (None, False),
        (4999, False),
    ],
)
def test_close_classification(code: int | None, terminal: bool) -> None:
    info = classify_close(code)
    assert info.terminal is terminal
    assert info.code == code
    assert info.reason
    if code in (4401, 4403):
        assert "pair again" in info.reason
