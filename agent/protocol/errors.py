"""Errors of the wire protocol, one subtree of ``agent.errors.AgentError``.

``LocalProtocolError`` means *we* misused the protocol (built an invalid
message, sent a frame the session does not allow): a bug on this side.
``RemoteProtocolError`` means the *peer* misbehaved (a malformed, oversized or
out-of-place frame, a signature that does not verify).  Its ``code`` is what
goes into the ``error`` frame sent back, and ``close_code`` is set by
:class:`agent.protocol.session.Session` when the frame must end the link.
"""

from __future__ import annotations

from typing import Any

from agent.errors import AgentError


class ProtocolError(AgentError):
    """Root of every error raised by ``agent.protocol``."""


class LocalProtocolError(ProtocolError):
    """This side misused the protocol; a programming error, never the peer's fault."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol refuses.

    ``code`` is the machine-readable reason used in the ``error`` frame.
    ``close_code`` is ``None`` when the link may carry on (answer with an
    ``error`` frame), or the websocket close code to end the link with.
    """

    code = "bad_frame"

    def __init_subclass__(cls, *, code: str | None = None, **kwargs: Any) -> None:
        # A subclass names its code in its header: class X(RemoteProtocolError, code="x").
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message, hint=hint)
        if code is not None:
            self.code = code
        self.close_code: int | None = None


class FrameTooLarge(RemoteProtocolError, code="frame_too_large"):
    """The frame exceeds the size limit."""


class FrameTooDeep(RemoteProtocolError, code="frame_too_deep"):
    """The frame nests deeper than the depth limit."""


class MalformedFrame(RemoteProtocolError, code="malformed"):
    """The frame is not one JSON object (bad JSON, duplicate keys, bad text)."""


class UnsupportedVersion(RemoteProtocolError, code="bad_version"):
    """The frame's ``v`` is not a version this side speaks."""


class UnknownType(RemoteProtocolError, code="unknown_type"):
    """The frame's ``type`` names no message of this protocol."""


class InvalidFields(RemoteProtocolError, code="bad_field"):
    """A field is missing, unexpected, or of the wrong type."""


class UnexpectedFrame(RemoteProtocolError, code="unexpected"):
    """A well-formed frame the session does not allow now or from this peer."""


class SignatureInvalid(RemoteProtocolError, code="bad_signature"):
    """A signature (flow, activation, auth nonce) does not verify."""


class TokenMalformed(ProtocolError):
    """A pairing token string cannot be parsed (garbled, truncated, wrong kind)."""


class KeyInvalid(RemoteProtocolError, code="bad_key"):
    """A public key from the peer is malformed or does not match its pinned fingerprint."""
