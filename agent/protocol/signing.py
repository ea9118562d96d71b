"""Canonical encoding, Ed25519 signatures, key fingerprints and pairing tokens.

Everything signed is the *canonical encoding* of a JSON object: keys sorted,
no whitespace, UTF-8, non-ASCII kept as is (``ensure_ascii=False``), no NaN.
Keys and signatures travel as standard base64 of the raw bytes (32-byte keys,
64-byte signatures).  Verification failures raise ``SignatureInvalid``,
malformed or mismatching keys ``KeyInvalid``, garbled pairing tokens
``TokenMalformed``; each message says what to do.

No I/O: randomness comes from ``secrets`` but every generator accepts an
injected ``randbytes`` for tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.protocol.errors import KeyInvalid, SignatureInvalid, TokenMalformed
from agent.protocol.frames import Activate, FlowPush

AUTH_CONTEXT: Final = "flow-agent-auth/v1"
REPAIR_CONTEXT: Final = "flow-agent-repair/v1"
TOKEN_PREFIX: Final = "fp1."
TOKEN_SECRET_BYTES: Final = 24
MIN_TOKEN_SECRET_BYTES: Final = 16
NONCE_BYTES: Final = 32

RandBytes = Callable[[int], bytes]


# -- canonical encoding -------------------------------------------------------


def canonical(obj: object) -> bytes:
    """The one byte string that is hashed and signed for ``obj``."""
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not canonically encodable JSON: {exc}") from exc


def flow_sha256(definition: dict[str, Any]) -> str:
    """Hex SHA-256 of the canonical encoding of a flow definition (``sha256`` fields)."""
    return hashlib.sha256(canonical(definition)).hexdigest()


def flow_payload(*, tenant: str, flow_id: str, version: int, definition: dict[str, Any]) -> bytes:
    doc = {"tenant": tenant, "id": flow_id, "version": version, "definition": definition}
    return canonical(doc)


def activation_payload(*, tenant: str, flow_id: str, version: int, serial: int) -> bytes:
    return canonical(
        {"tenant": tenant, "id": flow_id, "version": version, "serial": serial, "kind": "activate"}
    )


def auth_message(*, nonce: str, agent_id: str) -> bytes:
    """What the agent signs: the nonce exactly as the ``hello`` frame carried it (base64 text)."""
    return f"{AUTH_CONTEXT}\n{nonce}\n{agent_id}".encode()


def repair_message(*, agent_id: str, new_public_key: str, token_hash: str) -> bytes:
    """What a re-pairing agent signs with its old key: "retire ``agent_id``, whose key
    this is, in favour of ``new_public_key``, paired with this token" (its hash)."""
    return f"{REPAIR_CONTEXT}\n{agent_id}\n{new_public_key}\n{token_hash}".encode()


# -- keys ---------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _raw_public(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Standard base64 of the raw 32-byte public key."""
    return base64.b64encode(_raw_public(key)).decode("ascii")


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse a base64 raw public key; raises KeyInvalid."""
    raw = _b64decode(text, what="public key", error=KeyInvalid)
    if len(raw) != 32:
        raise KeyInvalid(f"public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``sha256:<64 hex>`` over the raw 32-byte public key."""
    return "sha256:" + hashlib.sha256(_raw_public(key)).hexdigest()


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """Raw 32-byte private key, for a 0600 file."""
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def private_key_from_bytes(raw: bytes) -> Ed25519PrivateKey:
    if len(raw) != 32:
        raise KeyInvalid(f"private key must be 32 bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def check_signing_key(*, expected_fp: str, signing_key: str) -> Ed25519PublicKey:
    """Pairing: the control plane's key must match the fingerprint pinned in the token."""
    key = load_public_key(signing_key)
    if not secrets.compare_digest(fingerprint(key), expected_fp):
        raise KeyInvalid(
            "the control plane's signing key does not match the fingerprint in the token;"
            " pairing aborted",
            hint="make sure the URL reaches the control plane that issued the token"
            " (a proxy or another server answered)",
        )
    return key


# -- signatures ---------------------------------------------------------------


def _sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload)).decode("ascii")


def _verify(key: Ed25519PublicKey, payload: bytes, signature: str, *, what: str) -> None:
    raw = _b64decode(signature, what=f"{what} signature", error=SignatureInvalid)
    try:
        key.verify(raw, payload)
    except InvalidSignature:
        raise SignatureInvalid(f"{what} signature does not verify") from None


def sign_flow(
    key: Ed25519PrivateKey, *, tenant: str, flow_id: str, version: int, definition: dict[str, Any]
) -> str:
    payload = flow_payload(tenant=tenant, flow_id=flow_id, version=version, definition=definition)
    return _sign(key, payload)


def verify_flow(
    key: Ed25519PublicKey,
    *,
    tenant: str,
    flow_id: str,
    version: int,
    definition: dict[str, Any],
    signature: str,
) -> None:
    payload = flow_payload(tenant=tenant, flow_id=flow_id, version=version, definition=definition)
    _verify(key, payload, signature, what=f"flow {flow_id!r} v{version}")


def verify_flow_push(key: Ed25519PublicKey, msg: FlowPush) -> None:
    """Everything an agent checks on a ``flow`` frame before storing it."""
    verify_flow(
        key,
        tenant=msg.tenant,
        flow_id=msg.id,
        version=msg.version,
        definition=msg.definition,
        signature=msg.signature,
    )
    if msg.definition.get("id") != msg.id or msg.definition.get("version") != msg.version:
        raise SignatureInvalid(
            f"flow {msg.id!r} v{msg.version}: the signed definition carries"
            " a different id or version"
        )
    if flow_sha256(msg.definition) != msg.sha256:
        raise SignatureInvalid(f"flow {msg.id!r} v{msg.version}: sha256 does not match")


def sign_activation(
    key: Ed25519PrivateKey, *, tenant: str, flow_id: str, version: int, serial: int
) -> str:
    payload = activation_payload(tenant=tenant, flow_id=flow_id, version=version, serial=serial)
    return _sign(key, payload)


def verify_activation(
    key: Ed25519PublicKey, *, tenant: str, flow_id: str, version: int, serial: int, signature: str
) -> None:
    payload = activation_payload(tenant=tenant, flow_id=flow_id, version=version, serial=serial)
    _verify(key, payload, signature, what=f"activation of {flow_id!r} v{version}")


def verify_activate(key: Ed25519PublicKey, msg: Activate) -> None:
    verify_activation(
        key,
        tenant=msg.tenant,
        flow_id=msg.id,
        version=msg.version,
        serial=msg.serial,
        signature=msg.signature,
    )


def new_nonce(*, randbytes: RandBytes = secrets.token_bytes) -> str:
    return base64.b64encode(randbytes(NONCE_BYTES)).decode("ascii")


def sign_auth(key: Ed25519PrivateKey, *, nonce: str, agent_id: str) -> str:
    return _sign(key, auth_message(nonce=nonce, agent_id=agent_id))


def verify_auth(key: Ed25519PublicKey, *, nonce: str, agent_id: str, signature: str) -> None:
    _verify(key, auth_message(nonce=nonce, agent_id=agent_id), signature, what="auth")


def sign_repair(
    old_key: Ed25519PrivateKey, *, agent_id: str, new_public_key: str, token_hash: str
) -> str:
    message = repair_message(
        agent_id=agent_id, new_public_key=new_public_key, token_hash=token_hash
    )
    return _sign(old_key, message)


def verify_repair(
    old_key: Ed25519PublicKey,
    *,
    agent_id: str,
    new_public_key: str,
    token_hash: str,
    signature: str,
) -> None:
    message = repair_message(
        agent_id=agent_id, new_public_key=new_public_key, token_hash=token_hash
    )
    _verify(old_key, message, signature, what="re-pairing")


# -- pairing tokens -----------------------------------------------------------

_FP = re.compile(r"sha256:[0-9a-f]{64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_TOKEN_FIELDS: Final = ("url", "region", "fp", "secret")
_HOW_TO = "copy the whole token printed by `flow-controlplane token create`, or ask for a new one"


@dataclass(frozen=True, kw_only=True)
class PairingToken:
    """What an admin copies to a host: where to pair, and a one-time secret."""

    url: str
    region: str
    fp: str
    secret: str

    def encode(self) -> str:
        body = json.dumps(
            {"url": self.url, "region": self.region, "fp": self.fp, "secret": self.secret},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
        return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")

    def __repr__(self) -> str:
        # The secret must never reach a log line through a repr.
        return f"PairingToken(url={self.url!r}, region={self.region!r}, fp={self.fp!r})"


def new_token_secret(*, randbytes: RandBytes = secrets.token_bytes) -> str:
    """base64url (no padding) of 24 random bytes: 192 bits."""
    return base64.urlsafe_b64encode(randbytes(TOKEN_SECRET_BYTES)).decode("ascii").rstrip("=")


def token_secret_hash(secret: str) -> str:
    """Hex SHA-256 of the secret's text; the only form the control plane stores."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_token(text: str) -> PairingToken:
    """Parse ``fp1.<base64url JSON>``; raises TokenMalformed saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise TokenMalformed("the pairing token is empty", hint=_HOW_TO)
    # Tokens pasted from mail or terminals pick up line breaks; they are never part of it.
    compact = "".join(text.split())
    if not compact.startswith(TOKEN_PREFIX):
        raise TokenMalformed(
            f"this is not a pairing token: it must start with {TOKEN_PREFIX!r}", hint=_HOW_TO
        )
    body = compact[len(TOKEN_PREFIX) :].rstrip("=")
    if not body or not _B64URL.fullmatch(body) or len(body) % 4 == 1:
        raise TokenMalformed(
            "the pairing token is garbled (not base64url after 'fp1.'); it may have been cut"
            " or altered when copied",
            hint=_HOW_TO,
        )
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        doc = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError):
        raise TokenMalformed(
            "the pairing token is garbled (its payload is not JSON); it may have been cut"
            " when copied",
            hint=_HOW_TO,
        ) from None
    if not isinstance(doc, dict):
        raise TokenMalformed("the pairing token's payload is not an object", hint=_HOW_TO)
    missing = [name for name in _TOKEN_FIELDS if not isinstance(doc.get(name), str)]
    if missing:
        raise TokenMalformed(
            "the pairing token lacks " + ", ".join(missing) + " (or they are not text)",
            hint=_HOW_TO,
        )
    extra = sorted(set(doc) - set(_TOKEN_FIELDS))
    if extra:
        raise TokenMalformed(
            f"the pairing token has unknown field(s) {', '.join(extra)}; it may be from a newer"
            " control plane",
            hint="upgrade flow-agent, or create the token with a matching control plane",
        )
    url = doc["url"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TokenMalformed(f"the pairing token's url {url!r} is not an http(s) URL", hint=_HOW_TO)
    if not _FP.fullmatch(doc["fp"]):
        raise TokenMalformed(
            "the pairing token's key fingerprint is not 'sha256:' and 64 hex digits", hint=_HOW_TO
        )
    secret = doc["secret"]
    if not _B64URL.fullmatch(secret) or len(secret) * 3 // 4 < MIN_TOKEN_SECRET_BYTES:
        raise TokenMalformed("the pairing token's secret is too short or garbled", hint=_HOW_TO)
    if not doc["region"]:
        raise TokenMalformed("the pairing token names no region", hint=_HOW_TO)
    return PairingToken(url=url, region=doc["region"], fp=doc["fp"], secret=secret)


def _b64decode(text: str, *, what: str, error: type[KeyInvalid | SignatureInvalid]) -> bytes:
    if not isinstance(text, str):
        raise error(f"{what} is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not valid base64") from None


__all__ = [
    "AUTH_CONTEXT",
    "REPAIR_CONTEXT",
    "TOKEN_PREFIX",
    "PairingToken",
    "activation_payload",
    "auth_message",
    "canonical",
    "check_signing_key",
    "fingerprint",
    "flow_payload",
    "flow_sha256",
    "generate_private_key",
    "load_public_key",
    "new_nonce",
    "new_token_secret",
    "parse_token",
    "private_key_bytes",
    "private_key_from_bytes",
    "public_key_b64",
    "repair_message",
    "sign_activation",
    "sign_auth",
    "sign_flow",
    "sign_repair",
    "token_secret_hash",
    "verify_activate",
    "verify_activation",
    "verify_auth",
    "verify_flow",
    "verify_flow_push",
    "verify_repair",
]
