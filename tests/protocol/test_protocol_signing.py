"""Canonical encoding, Ed25519 helpers and pairing tokens."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from agent.protocol import signing
from agent.protocol.errors import KeyInvalid, SignatureInvalid, TokenMalformed
from agent.protocol.frames import Activate, FlowPush
from agent.protocol.signing import PairingToken, parse_token

KEY = signing.private_key_from_bytes(bytes(range(32)))
OTHER = signing.private_key_from_bytes(bytes(range(1, 33)))
DEFINITION = {
    "format": "flow/v1",
    "id": "hello",
    "version": 2,
    "name": "Grüße",
    "start": "done",
    "elements": {"done": {"type": "end"}},
}


def test_canonical_encoding_is_sorted_compact_utf8() -> None:
    assert signing.canonical({"b": 1, "a": {"é": [1, 2.5]}}) == '{"a":{"é":[1,2.5]},"b":1}'.encode()
    with pytest.raises(ValueError):
        signing.canonical({"x": float("nan")})


def test_flow_signature_verifies_and_detects_tampering() -> None:
    public = KEY.public_key()
    sig = signing.sign_flow(KEY, tenant="acme", flow_id="hello", version=2, definition=DEFINITION)
    signing.verify_flow(
        public, tenant="acme", flow_id="hello", version=2, definition=DEFINITION, signature=sig
    )
    for change in ({"tenant": "other"}, {"version": 3}, {"flow_id": "bye"}):
        args = {"tenant": "acme", "flow_id": "hello", "version": 2, **change}
        with pytest.raises(SignatureInvalid):
            signing.verify_flow(public, definition=DEFINITION, signature=sig, **args)  # type: ignore[arg-type]
    with pytest.raises(SignatureInvalid):
        signing.verify_flow(
            public,
            tenant="acme",
            flow_id="hello",
            version=2,
            definition={**DEFINITION, "name": "x"},
            signature=sig,
        )
    with pytest.raises(SignatureInvalid):
        signing.verify_flow(
            OTHER.public_key(),
            tenant="acme",
            flow_id="hello",
            version=2,
            definition=DEFINITION,
            signature=sig,
        )
    with pytest.raises(SignatureInvalid, match="not valid base64"):
        signing.verify_flow(
            public,
            tenant="acme",
            flow_id="hello",
            version=2,
            definition=DEFINITION,
            signature="@@@",
        )


def test_flow_payload_is_the_documented_object() -> None:
    payload = signing.flow_payload(tenant="t", flow_id="f", version=1, definition={"k": 1})
    assert json.loads(payload) == {"tenant": "t", "id": "f", "version": 1, "definition": {"k": 1}}


def test_verify_flow_push_checks_sha_and_embedded_version() -> None:
    sig = signing.sign_flow(KEY, tenant="acme", flow_id="hello", version=2, definition=DEFINITION)
    good = FlowPush(
        tenant="acme",
        id="hello",
        version=2,
        definition=DEFINITION,
        sha256=signing.flow_sha256(DEFINITION),
        signature=sig,
        activate=True,
    )
    signing.verify_flow_push(KEY.public_key(), good)
    bad_sha = FlowPush(**{**good.__dict__, "sha256": "0" * 64})
    with pytest.raises(SignatureInvalid, match="sha256"):
        signing.verify_flow_push(KEY.public_key(), bad_sha)
    other = {**DEFINITION, "version": 1}
    sig1 = signing.sign_flow(KEY, tenant="acme", flow_id="hello", version=2, definition=other)
    mismatch = FlowPush(
        **{
            **good.__dict__,
            "definition": other,
            "signature": sig1,
            "sha256": signing.flow_sha256(other),
        }
    )
    with pytest.raises(SignatureInvalid, match="different id or version"):
        signing.verify_flow_push(KEY.public_key(), mismatch)


def test_activation_signature() -> None:
    sig = signing.sign_activation(KEY, tenant="acme", flow_id="hello", version=1, serial=4)
    msg = Activate(tenant="acme", id="hello", version=1, serial=4, signature=sig)
    signing.verify_activate(KEY.public_key(), msg)
    payload = json.loads(
        signing.activation_payload(tenant="acme", flow_id="hello", version=1, serial=4)
    )
    assert payload["kind"] == "activate"
    with pytest.raises(SignatureInvalid):
        signing.verify_activate(KEY.public_key(), Activate(**{**msg.__dict__, "serial": 5}))


def test_auth_nonce_signature() -> None:
    nonce = signing.new_nonce(randbytes=lambda n: b"\x01" * n)
    assert base64.b64decode(nonce) == b"\x01" * 32
    assert signing.auth_message(nonce=nonce, agent_id="ag_1") == (
        f"flow-agent-auth/v1\n{nonce}\nag_1".encode()
    )
    sig = signing.sign_auth(KEY, nonce=nonce, agent_id="ag_1")
    signing.verify_auth(KEY.public_key(), nonce=nonce, agent_id="ag_1", signature=sig)
    with pytest.raises(SignatureInvalid):
        signing.verify_auth(KEY.public_key(), nonce=nonce, agent_id="ag_2", signature=sig)


def test_keys_and_fingerprint() -> None:
    text = signing.public_key_b64(KEY)
    public = signing.load_public_key(text)
    raw = base64.b64decode(text)
    assert signing.fingerprint(public) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert signing.private_key_from_bytes(signing.private_key_bytes(KEY)).public_key() == public
    for bad in ("", "!!!", base64.b64encode(b"x" * 31).decode()):
        with pytest.raises(KeyInvalid):
            signing.load_public_key(bad)


def test_check_signing_key_against_token_fingerprint() -> None:
    fp = signing.fingerprint(KEY)
    key = signing.check_signing_key(expected_fp=fp, signing_key=signing.public_key_b64(KEY))
    assert signing.fingerprint(key) == fp
    with pytest.raises(KeyInvalid, match="does not match"):
        signing.check_signing_key(expected_fp=fp, signing_key=signing.public_key_b64(OTHER))


def make_token() -> PairingToken:
    return PairingToken(
        url="https://cp.example:8700",
        region="eu-1",
        fp=signing.fingerprint(KEY),
        secret=signing.new_token_secret(),
    )


def test_token_round_trip_and_format() -> None:
    token = make_token()
    text = token.encode()
    assert text.startswith("fp1.") and "=" not in text
    body = json.loads(base64.urlsafe_b64decode(text[4:] + "=" * (-len(text[4:]) % 4)))
    assert set(body) == {"url", "region", "fp", "secret"}
    assert len(base64.urlsafe_b64decode(token.secret + "==")) == 24
    assert parse_token(text) == token
    assert parse_token(f"  {text[:20]}\n{text[20:]}\n") == token
    assert token.secret not in repr(token)


def test_secret_hash_is_sha256_of_the_text() -> None:
    assert signing.token_secret_hash("abc") == hashlib.sha256(b"abc").hexdigest()


def _token_with(**changes: object) -> str:
    body = {
        "url": "https://cp.example",
        "region": "eu-1",
        "fp": signing.fingerprint(KEY),
        "secret": signing.new_token_secret(),
        **changes,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return "fp1." + base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("hello", "must start with 'fp1.'"),
        ("fp1.", "garbled"),
        ("fp1.!!!!", "garbled"),
        ("fp1.eyJ1cmwi", "garbled"),
        ("fp1." + base64.urlsafe_b64encode(b"[1]").decode().rstrip("="), "not an object"),
        (_token_with(url=None), "lacks url"),
        (_token_with(fp="md5:abc"), "fingerprint"),
        (_token_with(url="ftp://x"), "not an http\\(s\\) URL"),
        (_token_with(secret="abc"), "secret"),
        (_token_with(extra="1"), "unknown field"),
        (_token_with(region=""), "no region"),
    ],
)
def test_garbled_tokens_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(TokenMalformed, match=says) as info:
        parse_token(text)
    assert info.value.exit_code == 1


def test_truncated_token_is_refused() -> None:
    text = make_token().encode()
    for cut in (len(text) - 1, len(text) - 5, len(text) // 2):
        with pytest.raises(TokenMalformed):
            parse_token(text[:cut])
