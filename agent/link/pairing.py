"""Pairing: turn a one-time token into this agent's identity.

1. Parse the token (``fp1.…``): the control plane's URL, region and the
   fingerprint of its signing key, plus a one-time secret.
2. Make an Ed25519 key pair here; only the public key is sent.
3. ``POST {url}/agent/v1/pair`` over verified TLS (plaintext only to
   loopback unless allowed), following no redirect to another host.
4. Check the control plane's signing key against the token's fingerprint
   before anything is stored; a mismatch aborts.  (The sealing key sent in
   step 3 is made first; a failed attempt removes one it made.)
5. Store the key and identity (atomically), reset the outbox and the link
   status (a new identity starts at sequence 1, connected to nothing yet).

Re-pairing (``pair --force``) with the same control plane retires the old
identity: the request carries ``previous``, the old agent id and a signature
by the old key over the new public key and the token's hash
(``signing.repair_message``), and the control plane revokes the old agent in
the transaction that creates the new one.  Without the old key (lost,
damaged) pairing goes on and the old identity stays valid until an admin
revokes it; ``PairResult.retired`` says which happened.

The token itself is stored nowhere and never logged (``PairingToken``'s repr
leaves the secret out).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import OperationError, UsageError
from agent.identity import Identity, host_facts, load_identity, load_private_key, save_identity
from agent.link.outbox import Outbox
from agent.link.state import LinkState, LinkStatus, write_link_status
from agent.link.transport import (
    PAIR_PATH,
    USER_AGENT,
    check_plaintext,
    endpoint,
    same_host,
    ssl_context,
)
from agent.protocol.errors import KeyInvalid
from agent.protocol.sealing import public_key_text
from agent.protocol.signing import (
    PairingToken,
    check_signing_key,
    generate_private_key,
    parse_token,
    public_key_b64,
    sign_repair,
    token_secret_hash,
)
from agent.secrets import SEALING_KEY_FILE, load_sealing_key
from agent.store.sqlite import SqliteStore

log = logging.getLogger("flow_agent.pairing")

MAX_REDIRECTS: Final = 3
OWNER_KEY: Final = "link.agent_id"  # the identity the outbox and link status belong to
_NEW_TOKEN = "ask the control plane's admin for a new token (flow-controlplane token create)"


class PairingRefused(OperationError):
    """The control plane refused the token; ``code`` says why (used, expired, unknown)."""

    def __init__(self, message: str, *, code: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class PairingFailed(OperationError):
    """Pairing could not be completed (network, TLS, an odd answer, a key mismatch)."""


_REFUSALS: Final = {
    "token_used": "the pairing token was already used: a token pairs one agent, once",
    "token_expired": "the pairing token has expired",
    "token_unknown": "the control plane does not know this pairing token"
    " (it was mistyped, or it comes from another control plane)",
}


@dataclass(frozen=True, kw_only=True)
class PairResult:
    identity: Identity
    token: PairingToken
    previous: str | None = None  # the agent id this host had with the same control plane
    retired: bool = False  # whether the control plane revoked ``previous``


def read_token_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read token file {path}: {reason}") from None


def wipe_token_file(path: Path) -> bool:
    """Truncate then remove the token file; False (and a warning) when it cannot be."""
    try:
        with path.open("r+b") as fh:
            fh.truncate(0)
        path.unlink()
    except OSError as exc:
        log.warning(
            "could not wipe the pairing token file %s (%s); remove it by hand",
            path,
            exc.strerror or exc,
        )
        return False
    return True


async def _post(
    url: str, body: dict[str, Any], *, context: ssl.SSLContext | None, timeout: float
) -> tuple[int, Any]:
    """POST JSON, following at most a few redirects, all to the same host."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(
        timeout=client_timeout, trust_env=True, headers={"User-Agent": USER_AGENT}
    ) as session:
        for _ in range(MAX_REDIRECTS + 1):
            async with session.post(
                url,
                json=body,
                ssl=context if context is not None else False,
                allow_redirects=False,
            ) as resp:
                if resp.status in (301, 302, 303, 307, 308):
                    target = urljoin(url, resp.headers.get("Location", ""))
                    if not same_host(url, target) or resp.status not in (307, 308):
                        raise PairingFailed(
                            f"the control plane answered with a redirect to {target};"
                            " pairing follows no redirect to another host or method",
                            hint="use the control plane's real address in the token"
                            " (its --public-url)",
                        )
                    url = target
                    continue
                try:
                    payload = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    payload = None
                return resp.status, payload
        raise PairingFailed(f"more than {MAX_REDIRECTS} redirects while pairing")


async def request_pairing(
    token: PairingToken,
    *,
    public_key: str,
    ca_file: Path | None,
    allow_plaintext: bool,
    timeout: float = 30.0,
    sealing_key: str | None = None,
    previous: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Send the token and the public key; returns the control plane's answer (checked).

    ``sealing_key`` (X25519, base64url) lets the control plane seal secrets to this agent.
    ``previous`` (``{"agent_id", "signature"}``) asks it to retire the identity re-paired.
    """
    encrypted = check_plaintext(token.url, allow_plaintext=allow_plaintext)
    context = ssl_context(ca_file) if encrypted else None
    facts = host_facts()
    body = {
        "token_secret": token.secret,
        "public_key": public_key,
        "name": facts["hostname"],
        "facts": facts,
    }
    if sealing_key is not None:
        body["sealing_key"] = sealing_key
    if previous is not None:
        body["previous"] = previous
    url = endpoint(token.url, PAIR_PATH)
    try:
        status, payload = await _post(url, body, context=context, timeout=timeout)
    except aiohttp.ClientConnectorCertificateError as exc:
        raise PairingFailed(
            f"the TLS certificate of {token.url} is not trusted: {exc.certificate_error}",
            hint="if the control plane uses a private CA, pass its certificate with --ca-file",
        ) from None
    except aiohttp.ClientSSLError as exc:
        raise PairingFailed(f"TLS with {token.url} failed: {exc}") from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise PairingFailed(
            f"cannot reach the control plane at {token.url}: {type(exc).__name__}: {exc}",
            hint="check the address and the network (proxy settings: HTTPS_PROXY, NO_PROXY);"
            " the token was not used and can be tried again",
        ) from None
    code = payload.get("error") if isinstance(payload, dict) else None
    if status == 401 and code in _REFUSALS:
        raise PairingRefused(_REFUSALS[code], code=code, hint=_NEW_TOKEN)
    if status != 200 or not isinstance(payload, dict):
        message = payload.get("message") if isinstance(payload, dict) else None
        raise PairingFailed(
            f"the control plane refused pairing (HTTP {status}"
            + (f", {code}: {message})" if code else ")")
        )
    missing = [
        k
        for k in ("agent_id", "tenant", "region", "url", "signing_key")
        if not isinstance(payload.get(k), str) or not payload[k]
    ]
    if missing:
        raise PairingFailed(f"the control plane's answer lacks {', '.join(missing)}")
    return payload


async def pair(
    text: str,
    *,
    state_dir: Path,
    store: SqliteStore,
    ca_file: Path | None = None,
    allow_plaintext: bool = False,
    timeout: float = 30.0,
    token_file: Path | None = None,
) -> PairResult:
    """Pair this state directory with the tenant behind ``text`` (a token).

    ``token_file``, the file the token came from, is wiped once the token is
    spent: after a pairing, and after a refusal (used, expired, unknown: worth
    nothing any more); not when the control plane could not be reached.
    """
    try:
        result = await _pair(
            text,
            state_dir=state_dir,
            store=store,
            ca_file=ca_file,
            allow_plaintext=allow_plaintext,
            timeout=timeout,
        )
    except PairingRefused:
        if token_file is not None:
            wipe_token_file(token_file)
        raise
    if token_file is not None:
        wipe_token_file(token_file)
    return result


async def _pair(
    text: str,
    *,
    state_dir: Path,
    store: SqliteStore,
    ca_file: Path | None,
    allow_plaintext: bool,
    timeout: float,
) -> PairResult:
    token = parse_token(text)
    # Kept across re-pairings: secrets sealed to this host stay openable.  One
    # this attempt creates goes again when the attempt fails: nothing stays
    # stored unless the control plane's answer checks out.
    sealing_path = state_dir / SEALING_KEY_FILE
    fresh_sealing = not sealing_path.exists()
    sealing = load_sealing_key(state_dir, create=True)
    try:
        identity, key, answer, previous = await _ask(
            token,
            state_dir=state_dir,
            sealing=public_key_text(sealing),
            ca_file=ca_file,
            allow_plaintext=allow_plaintext,
            timeout=timeout,
        )
    except BaseException:
        if fresh_sealing:
            sealing_path.unlink(missing_ok=True)
        raise
    identity = save_identity(state_dir, identity, key)
    adopt_identity(store, identity)
    log.info("paired as %s in tenant %s", identity.agent_id, identity.tenant)
    retired = previous is not None and answer.get("retired") == previous
    if retired:
        log.info("the previous identity %s is revoked at the control plane", previous)
    elif previous is not None:
        log.warning(
            "the previous identity %s stays valid at the control plane until an admin"
            " revokes it (flow-controlplane revoke)",
            previous,
        )
    return PairResult(identity=identity, token=token, previous=previous, retired=retired)


async def _ask(
    token: PairingToken,
    *,
    state_dir: Path,
    sealing: str,
    ca_file: Path | None,
    allow_plaintext: bool,
    timeout: float,
) -> tuple[Identity, Ed25519PrivateKey, dict[str, Any], str | None]:
    """Ask the control plane and check its answer: the identity to store (not stored yet),
    its key, the answer, and the agent id a re-pairing retires."""
    key = generate_private_key()
    public_key = public_key_b64(key)
    old = _previous(state_dir, token)
    proof = None
    if old is not None:
        old_identity, old_key = old
        signature = sign_repair(
            old_key,
            agent_id=old_identity.agent_id,
            new_public_key=public_key,
            token_hash=token_secret_hash(token.secret),
        )
        proof = {"agent_id": old_identity.agent_id, "signature": signature}
    answer = await request_pairing(
        token,
        public_key=public_key,
        ca_file=ca_file,
        allow_plaintext=allow_plaintext,
        timeout=timeout,
        sealing_key=sealing,
        previous=proof,
    )
    try:
        check_signing_key(expected_fp=token.fp, signing_key=answer["signing_key"])
    except KeyInvalid as exc:
        raise PairingFailed(exc.message, hint=exc.hint) from None
    if answer["region"] != token.region:
        raise PairingFailed(
            f"the control plane says region {answer['region']!r}, the token {token.region!r};"
            " pairing aborted"
        )
    if not same_host(answer["url"], token.url):
        raise PairingFailed(
            f"the control plane names another address ({answer['url']}) than the token"
            f" ({token.url}); pairing aborted",
            hint="the control plane's --public-url must be the address in its tokens",
        )
    identity = Identity(
        agent_id=answer["agent_id"],
        tenant=answer["tenant"],
        region=answer["region"],
        url=token.url,
        signing_key=answer["signing_key"],
        paired_at=datetime.now(UTC).isoformat(timespec="seconds"),
        name=host_facts()["hostname"],
    )
    return identity, key, answer, None if proof is None else proof["agent_id"]


def _previous(state_dir: Path, token: PairingToken) -> tuple[Identity, Ed25519PrivateKey] | None:
    """The identity this state directory has with the token's control plane, and its key."""
    try:
        identity = load_identity(state_dir)
        if identity is None or not same_host(identity.url, token.url):
            return None  # never paired, or with another control plane that knows nothing of it
        return identity, load_private_key(state_dir)
    except OperationError as exc:
        log.warning(
            "the previous identity cannot be retired (%s): it stays valid at the control"
            " plane until an admin revokes it",
            exc.message,
        )
        return None


def adopt_identity(store: SqliteStore, identity: Identity) -> bool:
    """Make the store's link state belong to ``identity``; True when it was reset.

    A new identity starts a new event sequence at the control plane, so the
    outbox of an earlier identity is dropped and numbering restarts at 1.
    Checked again at every start, so a pairing interrupted between writing
    the identity and resetting the outbox is finished there.
    """
    if store.get_meta(OWNER_KEY) == identity.agent_id:
        return False
    with store.transaction():
        Outbox(store).reset()
        write_link_status(store, LinkStatus(state=LinkState.NEVER, detail="paired"))
        store.set_meta(OWNER_KEY, identity.agent_id)
    return True


__all__ = [
    "PairResult",
    "PairingFailed",
    "PairingRefused",
    "adopt_identity",
    "pair",
    "read_token_file",
    "request_pairing",
    "wipe_token_file",
]
