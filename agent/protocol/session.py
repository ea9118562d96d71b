"""The link session as data: states, who may send what, and when.

Both ends drive one :class:`Session` (``role`` says which end it is).  Feed it
frames from the peer with :meth:`Session.receive` and pass every frame you
mean to send through :meth:`Session.send`; it encodes, checks the frame is
legal in the current state for this role, and moves the state along the
table below.  An illegal send raises ``LocalProtocolError`` (our bug); an
illegal or malformed received frame raises a ``RemoteProtocolError`` whose
``close_code`` says whether to answer with an ``error`` frame (``None``) or
close the link (4400).

::

    CONNECTING --hello--> AUTHENTICATING --auth--> AUTHENTICATING --welcome--> READY
    any state --close()--> CLOSED

Close codes are classified once, in :func:`classify_close`: 4401 and 4403
are terminal (re-pair), everything else is retried with backoff.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final

from agent.protocol.errors import LocalProtocolError, RemoteProtocolError, UnexpectedFrame
from agent.protocol.frames import MAX_DEPTH, MAX_FRAME_BYTES, Message, decode, encode


class SessionState(Enum):
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    CLOSED = "closed"


class Role(Enum):
    AGENT = "agent"
    CONTROL_PLANE = "control_plane"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    SERVER_RESTART = 1012
    PROTOCOL_ERROR = 4400
    AUTH_REFUSED = 4401
    REVOKED = 4403
    REPLACED = 4409


_AGENT = frozenset({Role.AGENT})
_CP = frozenset({Role.CONTROL_PLANE})
_BOTH = _AGENT | _CP

SENDERS: Final[Mapping[str, frozenset[Role]]] = {
    "hello": _CP,
    "auth": _AGENT,
    "welcome": _CP,
    "inventory": _AGENT,
    "flow": _CP,
    "activate": _CP,
    "flow_ack": _AGENT,
    "start_run": _CP,
    "run_ack": _AGENT,
    "cancel_run": _CP,
    "events": _AGENT,
    "ack": _CP,
    "status": _AGENT,
    "secret": _CP,
    "secret_ack": _AGENT,
    "error": _BOTH,
}

_HANDSHAKE = frozenset({"hello", "auth", "welcome"})
_S = SessionState

TRANSITIONS: Final[Mapping[tuple[SessionState, str], SessionState]] = {
    (_S.CONNECTING, "hello"): _S.AUTHENTICATING,
    (_S.AUTHENTICATING, "auth"): _S.AUTHENTICATING,
    (_S.AUTHENTICATING, "welcome"): _S.READY,
    (_S.AUTHENTICATING, "error"): _S.AUTHENTICATING,
    **{(_S.READY, kind): _S.READY for kind in SENDERS if kind not in _HANDSHAKE},
}

# Handshake frames happen once each, and welcome only answers an auth.
ONCE: Final = _HANDSHAKE
REQUIRES: Final[Mapping[str, str]] = {"welcome": "auth"}

TERMINAL_CLOSE_CODES: Final = frozenset({CloseCode.AUTH_REFUSED, CloseCode.REVOKED})
MAX_REFUSED_IN_A_ROW: Final = 20

_CLOSE_REASONS: Final[Mapping[int, str]] = {
    CloseCode.NORMAL: "closed normally",
    CloseCode.GOING_AWAY: "the peer is going away",
    CloseCode.SERVER_RESTART: "the control plane is restarting",
    CloseCode.PROTOCOL_ERROR: "protocol error: too many refused frames or a bad handshake",
    CloseCode.AUTH_REFUSED: (
        "authentication refused: the control plane does not accept this agent's identity;"
        " pair again with a new token"
    ),
    CloseCode.REVOKED: "this agent was revoked by an administrator; pair again with a new token",
    CloseCode.REPLACED: "replaced by a newer connection of the same agent",
}


@dataclass(frozen=True, kw_only=True)
class CloseInfo:
    """How a closed link is to be treated: ``terminal`` means do not retry, re-pair."""

    code: int | None
    terminal: bool
    reason: str


def classify_close(code: int | None) -> CloseInfo:
    """The one place that decides whether a close code is worth retrying."""
    if code is None:
        return CloseInfo(code=None, terminal=False, reason="the connection was lost")
    reason = _CLOSE_REASONS.get(code, f"closed with code {code}")
    return CloseInfo(code=code, terminal=code in TERMINAL_CLOSE_CODES, reason=reason)


class Session:
    """One link session from one end's point of view; never touches a socket."""

    def __init__(
        self,
        *,
        role: Role,
        max_bytes: int = MAX_FRAME_BYTES,
        max_depth: int = MAX_DEPTH,
        max_refused: int = MAX_REFUSED_IN_A_ROW,
    ) -> None:
        self.role = role
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_refused = max_refused
        self._state = SessionState.CONNECTING
        self._seen: set[str] = set()
        self._refused = 0
        self.close_info: CloseInfo | None = None

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def refused_in_a_row(self) -> int:
        return self._refused

    def send(self, msg: Message) -> str:
        """Check that this end may send ``msg`` now, move the state, return the frame text."""
        if self._state is SessionState.CLOSED:
            raise LocalProtocolError(f"cannot send {msg.TYPE!r}: the session is closed")
        problem = self._illegal(msg.TYPE, sender=self.role)
        if problem:
            raise LocalProtocolError(f"cannot send {msg.TYPE!r}: {problem}")
        text = encode(msg, max_bytes=self.max_bytes)
        self._advance(msg.TYPE)
        return text

    def receive(self, text: str | bytes) -> Message:
        """Decode and check a frame from the peer; raises RemoteProtocolError if refused.

        ``bytes`` (a binary websocket frame) is accepted only to be refused like
        any other malformed frame.
        """
        if self._state is SessionState.CLOSED:
            raise LocalProtocolError("cannot receive: the session is closed")
        try:
            msg = decode(text, max_bytes=self.max_bytes, max_depth=self.max_depth)
            peer = Role.AGENT if self.role is Role.CONTROL_PLANE else Role.CONTROL_PLANE
            problem = self._illegal(msg.TYPE, sender=peer)
            if problem:
                raise UnexpectedFrame(f"{msg.TYPE!r} frame refused: {problem}")
        except RemoteProtocolError as exc:
            self._refused += 1
            if self._state is not SessionState.READY or self._refused > self.max_refused:
                exc.close_code = CloseCode.PROTOCOL_ERROR
            raise
        self._refused = 0
        self._advance(msg.TYPE)
        return msg

    def close(self, code: int | None) -> CloseInfo:
        """Move to CLOSED from any state and classify ``code`` (``None``: connection lost)."""
        self._state = SessionState.CLOSED
        self.close_info = classify_close(code)
        return self.close_info

    def _illegal(self, kind: str, *, sender: Role) -> str | None:
        if sender not in SENDERS.get(kind, frozenset()):
            return f"only the {_names(SENDERS.get(kind, frozenset()))} sends it"
        if (self._state, kind) not in TRANSITIONS:
            return f"not allowed while {self._state.value}"
        if kind in ONCE and kind in self._seen:
            return "already sent in this session"
        needed = REQUIRES.get(kind)
        if needed and needed not in self._seen:
            return f"{needed!r} must come first"
        return None

    def _advance(self, kind: str) -> None:
        self._seen.add(kind)
        self._state = TRANSITIONS[(self._state, kind)]


def _names(roles: frozenset[Role]) -> str:
    return " or ".join(sorted(r.value.replace("_", " ") for r in roles)) or "nobody"


__all__ = [
    "MAX_REFUSED_IN_A_ROW",
    "SENDERS",
    "TERMINAL_CLOSE_CODES",
    "TRANSITIONS",
    "CloseCode",
    "CloseInfo",
    "Role",
    "Session",
    "SessionState",
    "classify_close",
]
