"""Signed webhook deliveries: HMAC-SHA256 over ``timestamp + "." + body``.

The sender puts the unix time (whole seconds) in ``X-Flow-Timestamp`` and
``sha256=<hex of HMAC-SHA256(secret, timestamp + "." + raw body)>`` in
``X-Flow-Signature``.  A delivery is accepted when the signature matches (in
constant time), the timestamp is within ``WINDOW`` seconds of the agent's
clock, and the same signature was not accepted before within that window.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from agent.errors import OperationError

TIMESTAMP_HEADER = "X-Flow-Timestamp"
SIGNATURE_HEADER = "X-Flow-Signature"
WINDOW = 300.0  # seconds either side of the agent's clock
_PREFIX = "sha256="


class SignatureRefused(OperationError):
    """A delivery whose signature or timestamp does not hold; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Flow-Signature`` value for a delivery (what senders compute)."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return _PREFIX + mac.hexdigest()


def verify(
    secret: str,
    *,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    window: float = WINDOW,
) -> None:
    """Raise ``SignatureRefused`` unless the delivery is signed and fresh."""
    if not timestamp or not signature:
        missing = [
            name
            for name, value in ((TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, signature))
            if not value
        ]
        raise SignatureRefused(
            "signature_missing", "this webhook is signed; missing header " + ", ".join(missing)
        )
    text = timestamp.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise SignatureRefused(
            "signature_invalid", f"{TIMESTAMP_HEADER} must be unix time in whole seconds"
        )
    expected = sign(secret, text, body)
    # Compare before looking at the clock, so a forger learns nothing from
    # the order of the checks.
    if not hmac.compare_digest(
        signature.strip().lower().encode("ascii", "replace"), expected.encode()
    ):
        raise SignatureRefused(
            "signature_invalid", f"{SIGNATURE_HEADER} does not match the body and timestamp"
        )
    if abs(now - int(text)) > window:
        raise SignatureRefused(
            "signature_expired",
            f"{TIMESTAMP_HEADER} is more than {int(window)} seconds away from the agent's "
            "clock (a replay, or a clock that is off)",
        )


class ReplayGuard:
    """Signatures accepted within the window: a repeated delivery is refused.

    Bounded: when full, the oldest entries go first.  An entry older than the
    window is useless anyway, since its timestamp would be refused.
    """

    def __init__(self, *, window: float = WINDOW, limit: int = 10_000) -> None:
        self.window = window
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, signature: str, *, now: float) -> bool:
        """Record ``signature``; False when it was already recorded."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= 2 * self.window and len(self._seen) < self.limit:
                break
            del self._seen[oldest]
        key = signature.strip().lower()
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    def forget(self, signature: str) -> None:
        """Let a delivery be retried (the agent failed to start its run)."""
        self._seen.pop(signature.strip().lower(), None)
