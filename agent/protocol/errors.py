"""Errors of the wire protocol, one subtree of ``agent.errors.AgentError``.

``LocalProtocolError`` means *we* misused the protocol (built an invalid
message, sent a frame the session does not allow): a bug on this side.
``RemoteProtocolError`` means the *peer* misbehaved (a malformed, oversized or
out-of-place frame, a signature that does not verify).  Its ``code`` is what
goes into the ``error`` frame sent back, and ``close_code`` is set by
:class:`agent.protocol.session.Session` when the frame must end the link.
"""

from __future__ import annotations

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

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message, hint=hint)
        if code is not None:
            self.code = code
        self.close_code: int | None = None


class FrameTooLarge(RemoteProtocolError):
    """The frame exceeds the size limit."""

    code = "frame_too_large"


class FrameTooDeep(RemoteProtocolError):
    """The frame nests deeper than the depth limit."""

    code = "frame_too_deep"


class MalformedFrame(RemoteProtocolError):
    """The frame is not one JSON object (bad JSON, duplicate keys, bad text)."""

    code = "malformed"


class UnsupportedVersion(RemoteProtocolError):
    """The frame's ``v`` is not a version this side speaks."""

    code = "bad_version"


class UnknownType(RemoteProtocolError):
    """The frame's ``type`` names no message of this protocol."""

    code = "unknown_type"


class InvalidFields(RemoteProtocolError):
    """A field is missing, unexpected, or of the wrong type."""

    code = "bad_field"


class UnexpectedFrame(RemoteProtocolError):
    """A well-formed frame the session does not allow now or from this peer."""

    code = "unexpected"


class SignatureInvalid(RemoteProtocolError):
    """A signature (flow, activation, auth nonce) does not verify."""

    code = "bad_signature"


class TokenMalformed(ProtocolError):
    """A pairing token string cannot be parsed (garbled, truncated, wrong kind)."""


class KeyInvalid(RemoteProtocolError):
    """A public key from the peer is malformed or does not match its pinned fingerprint."""

    code = "bad_key"
