"""Sans-I/O implementation of the agent <-> control plane protocol v1 (docs/protocol.md).

No asyncio, no sockets: both the agent's link pump and the reference control
plane feed text in and take text out.

Modules:

- ``frames``: one frozen dataclass per message type (``Hello``, ``Auth``,
  ``Welcome``, ``Inventory``, ``FlowPush`` (type ``flow``), ``Activate``,
  ``FlowAck``, ``StartRun``, ``RunAck``, ``CancelRun``, ``Events``, ``Ack``,
  ``Status``, ``ErrorFrame`` (type ``error``)), plus ``encode(msg) -> str``
  and ``decode(text, *, max_bytes, max_depth) -> Message``.
- ``session``: ``Session(role=Role.AGENT | Role.CONTROL_PLANE)``, the state
  machine CONNECTING -> AUTHENTICATING -> READY -> CLOSED; ``send(msg) -> str``,
  ``receive(text) -> Message``, ``close(code) -> CloseInfo``;
  ``classify_close(code)`` (4401/4403 terminal, everything else retryable).
- ``backoff``: ``delays(...)`` (capped, fully jittered exponential generator)
  and ``Backoff`` (with the reset rule after a healthy session).
- ``signing``: canonical JSON, Ed25519 sign/verify of flows, activations and
  the auth nonce, ``fingerprint``, pairing tokens (``PairingToken``,
  ``parse_token``).
- ``errors``: ``ProtocolError`` (an ``AgentError``) with
  ``LocalProtocolError`` (we misused it) apart from ``RemoteProtocolError``
  (the peer misbehaved; carries ``code`` and ``close_code``).

A typical receive loop on either side::

    session = Session(role=Role.AGENT)
    for text in frames_from_socket:
        try:
            msg = session.receive(text)
        except RemoteProtocolError as exc:
            if exc.close_code:
                close_socket(exc.close_code)
                break
            send_text(session.send(error_frame(exc)))
            continue
        match msg:
            case Hello(): ...
"""

from agent.protocol.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SignatureInvalid,
    TokenMalformed,
)
from agent.protocol.frames import Message, decode, encode, error_frame
from agent.protocol.session import CloseCode, CloseInfo, Role, Session, SessionState, classify_close

__all__ = [
    "CloseCode",
    "CloseInfo",
    "LocalProtocolError",
    "Message",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "Session",
    "SessionState",
    "SignatureInvalid",
    "TokenMalformed",
    "classify_close",
    "decode",
    "encode",
    "error_frame",
]
