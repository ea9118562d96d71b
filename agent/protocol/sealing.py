"""Secrets sealed to one agent: X25519, HKDF-SHA256 and AES-256-GCM, no I/O.

The control plane seals with the agent's X25519 public key (sent at
pairing) and a fresh ephemeral key; only the agent, holding the private key
in ``STATE_DIR/sealing.key``, can open it.  The agent id is associated data,
so a sealed secret copied to another agent's link does not open.
docs/secrets.md specifies the format; ``agent.secrets`` re-exports this
module for the agent's side, and the control plane imports it directly
(it shares ``agent/protocol`` and nothing else of the agent).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import OperationError, UsageError
from agent.flow.parse import SECRET_NAME

MAX_VALUE_BYTES: Final = 64 * 1024
SEALED_VERSION: Final = 1
SEALED_ALG: Final = "X25519-HKDF-SHA256-A256GCM"

_AAD_SEALED: Final = b"flow-agent sealed secret v1\x00"
_HKDF_INFO: Final = b"flow-agent sealed secret v1"
_NONCE_BYTES: Final = 12


class SealedSecretInvalid(OperationError):
    """A sealed secret that is malformed, not for this agent, or tampered with."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a valid secret name",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit "
            "(at most 128 characters)",
        )
    return name


def check_value(value: str) -> bytes:
    """The value's UTF-8 bytes; raises UsageError (never quoting it) when unfit."""
    if not isinstance(value, str):
        raise UsageError("a secret value must be text")
    data = value.encode("utf-8")
    if len(data) > MAX_VALUE_BYTES:
        raise UsageError(f"a secret value is limited to {MAX_VALUE_BYTES // 1024} KiB")
    return data


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def unb64(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_text(key: X25519PrivateKey | X25519PublicKey) -> str:
    """The public key as the control plane stores it: base64url, no padding."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return b64(public.public_bytes_raw())


def load_sealing_public_key(key: X25519PublicKey | bytes | str) -> X25519PublicKey:
    """An X25519 public key from its raw bytes or base64url text; SealedSecretInvalid if not."""
    if isinstance(key, X25519PublicKey):
        return key
    try:
        raw = unb64(key) if isinstance(key, str) else key
        return X25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        raise SealedSecretInvalid("not an X25519 public key (32 bytes, base64url)") from None


def _sealing_key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=_HKDF_INFO)
    return hkdf.derive(shared)


def seal(
    recipient_public_key: X25519PublicKey | bytes | str, *, agent_id: str, name: str, value: str
) -> dict[str, Any]:
    """Seal ``name``/``value`` to one agent (the control plane's side).

    Returns a JSON object: ``{"v", "alg", "epk", "nonce", "ct"}``, the binary
    fields in base64url without padding.
    """
    check_name(name)
    check_value(value)
    recipient = load_sealing_public_key(recipient_public_key)
    ephemeral = X25519PrivateKey.generate()
    epk = ephemeral.public_key().public_bytes_raw()
    key = _sealing_key(ephemeral.exchange(recipient), epk, recipient.public_bytes_raw())
    nonce = os.urandom(_NONCE_BYTES)
    plain = json.dumps({"name": name, "value": value}, separators=(",", ":")).encode("utf-8")
    ct = AESGCM(key).encrypt(nonce, plain, _AAD_SEALED + agent_id.encode("utf-8"))
    return {
        "v": SEALED_VERSION,
        "alg": SEALED_ALG,
        "epk": b64(epk),
        "nonce": b64(nonce),
        "ct": b64(ct),
    }


def open_sealed(
    agent_private_key: X25519PrivateKey, sealed: Mapping[str, Any] | str, *, agent_id: str
) -> tuple[str, str]:
    """Open what ``seal`` made for this agent: ``(name, value)``.

    Raises ``SealedSecretInvalid`` for anything malformed, sealed to another
    key or agent id, or altered on the way; the message never quotes it.
    """
    try:
        doc = json.loads(sealed) if isinstance(sealed, str) else dict(sealed)
        if doc.get("v") != SEALED_VERSION or doc.get("alg") != SEALED_ALG:
            raise SealedSecretInvalid(
                f"unsupported sealed secret (want v {SEALED_VERSION}, alg {SEALED_ALG})"
            )
        epk = unb64(doc["epk"])
        nonce = unb64(doc["nonce"])
        ct = unb64(doc["ct"])
    except SealedSecretInvalid:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        raise SealedSecretInvalid(
            "malformed sealed secret (expected an object with v, alg, epk, nonce and ct)"
        ) from None
    if len(nonce) != _NONCE_BYTES:
        raise SealedSecretInvalid("malformed sealed secret (the nonce is not 12 bytes)")
    ephemeral = load_sealing_public_key(epk)
    recipient = agent_private_key.public_key().public_bytes_raw()
    key = _sealing_key(agent_private_key.exchange(ephemeral), epk, recipient)
    try:
        plain = AESGCM(key).decrypt(nonce, ct, _AAD_SEALED + agent_id.encode("utf-8"))
    except InvalidTag:
        raise SealedSecretInvalid(
            "sealed secret does not open: it was sealed to another agent or key, "
            "or altered on the way"
        ) from None
    try:
        body = json.loads(plain)
        name, value = body["name"], body["value"]
    except (ValueError, TypeError, KeyError):
        raise SealedSecretInvalid("sealed secret opened but holds no name and value") from None
    if not isinstance(name, str) or not isinstance(value, str):
        raise SealedSecretInvalid("sealed secret opened but holds no name and value")
    if not SECRET_NAME.fullmatch(name):
        raise SealedSecretInvalid("sealed secret opened but its name is not a valid secret name")
    return name, value


__all__ = [
    "MAX_VALUE_BYTES",
    "SEALED_ALG",
    "SEALED_VERSION",
    "SealedSecretInvalid",
    "check_name",
    "check_value",
    "load_sealing_public_key",
    "open_sealed",
    "public_key_text",
    "seal",
]
