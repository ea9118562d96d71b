"""Re-pairing retires the old identity: the agent's ``pair`` against the real control plane.

The host proves it holds the old key (a signature over the new public key and
the token's hash); the control plane revokes the old agent in the transaction
that creates the new one.  Without that proof the old identity stays valid.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cphelpers import Admin, LinkClient, pair

from agent.identity import KEY_FILE, load_private_key
from agent.link.pairing import pair as agent_pair
from agent.protocol.signing import (
    generate_private_key,
    parse_token,
    public_key_b64,
    sign_repair,
    token_secret_hash,
)
from agent.store.sqlite import SqliteStore
from controlplane.app import RunningServer

REVOKED = 4403


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(tmp_path / "agent", synchronous="off")
    yield s
    s.close()


async def _status(admin: Admin, agent_id: str, tenant: str = "acme") -> str:
    answer = await admin.ok("GET", f"/admin/v1/tenants/{tenant}/agents/{agent_id}")
    assert isinstance(answer, dict)
    return str(answer["status"])


async def test_re_pairing_revokes_the_old_identity_and_the_new_one_works(
    admin: Admin, tenant: str, server: RunningServer, store: SqliteStore, tmp_path: Path
) -> None:
    state = tmp_path / "agent"
    first = await agent_pair(await admin.token(), state_dir=state, store=store)
    assert first.previous is None and not first.retired
    old_id, old_key = first.identity.agent_id, load_private_key(state)
    live = await LinkClient.connect(server.url, old_id, old_key)
    await live.ready()

    second = await agent_pair(await admin.token(), state_dir=state, store=store)
    new_id = second.identity.agent_id
    assert new_id != old_id
    assert second.previous == old_id and second.retired

    assert await live.close_code() == REVOKED  # its session ends at once
    again = await LinkClient.connect(server.url, old_id, old_key)
    assert await again.close_code() == REVOKED  # and it cannot come back
    assert await _status(admin, old_id) == "revoked"
    fresh = await LinkClient.connect(server.url, new_id, load_private_key(state))
    welcome = await fresh.ready()
    assert welcome.tenant == "acme"
    assert await _status(admin, new_id) == "online"
    await fresh.close()


async def test_without_the_old_key_pairing_works_and_the_old_identity_stays(
    admin: Admin,
    tenant: str,
    server: RunningServer,
    store: SqliteStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = tmp_path / "agent"
    first = await agent_pair(await admin.token(), state_dir=state, store=store)
    old_id, old_key = first.identity.agent_id, load_private_key(state)
    (state / KEY_FILE).unlink()  # the key is lost

    second = await agent_pair(await admin.token(), state_dir=state, store=store)
    assert second.previous is None and not second.retired
    assert "stays valid at the control plane until an admin revokes it" in caplog.text
    assert await _status(admin, old_id) == "offline"
    old = await LinkClient.connect(server.url, old_id, old_key)
    await old.ready()  # still valid, as docs/pairing.md says
    await old.close()


async def _pair_with_proof(
    admin: Admin, *, tenant: str, previous: dict[str, Any], new_key: Any = None
) -> dict[str, Any]:
    token = parse_token(await admin.token(tenant))
    key = new_key or generate_private_key()
    body = {
        "token_secret": token.secret,
        "public_key": public_key_b64(key),
        "name": "host-2",
        "facts": {},
        "previous": previous(token) if callable(previous) else previous,
    }
    async with admin.http.post(token.url + "/agent/v1/pair", json=body) as resp:
        answer = await resp.json()
        answer["http_status"] = resp.status
        return dict(answer)


async def test_a_proof_that_does_not_verify_retires_nothing(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    victim = await pair(admin)
    key = generate_private_key()

    def forged(token: Any) -> dict[str, str]:
        # Signed by a key that is not the victim's: a token holder cannot revoke others.
        signature = sign_repair(
            generate_private_key(),
            agent_id=victim.agent_id,
            new_public_key=public_key_b64(key),
            token_hash=token_secret_hash(token.secret),
        )
        return {"agent_id": victim.agent_id, "signature": signature}

    answer = await _pair_with_proof(admin, tenant="acme", previous=forged, new_key=key)
    assert answer["http_status"] == 200 and answer["retired"] is None
    assert await _status(admin, victim.agent_id) == "offline"


async def test_a_proof_for_another_new_key_or_token_retires_nothing(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    old = await pair(admin)

    def for_another_key(token: Any) -> dict[str, str]:
        signature = sign_repair(
            old.key,
            agent_id=old.agent_id,
            new_public_key=public_key_b64(generate_private_key()),
            token_hash=token_secret_hash(token.secret),
        )
        return {"agent_id": old.agent_id, "signature": signature}

    answer = await _pair_with_proof(admin, tenant="acme", previous=for_another_key)
    assert answer["retired"] is None

    key = generate_private_key()
    stale = sign_repair(
        old.key, agent_id=old.agent_id, new_public_key=public_key_b64(key), token_hash="0" * 64
    )
    previous = {"agent_id": old.agent_id, "signature": stale}
    answer = await _pair_with_proof(admin, tenant="acme", previous=previous, new_key=key)
    assert answer["retired"] is None
    assert await _status(admin, old.agent_id) == "offline"


async def test_an_agent_of_another_tenant_is_not_retired(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    await admin.ok("POST", "/admin/v1/tenants", {"name": "other"})
    theirs = await pair(admin, tenant="other")
    key = generate_private_key()

    def proof(token: Any) -> dict[str, str]:
        signature = sign_repair(
            theirs.key,
            agent_id=theirs.agent_id,
            new_public_key=public_key_b64(key),
            token_hash=token_secret_hash(token.secret),
        )
        return {"agent_id": theirs.agent_id, "signature": signature}

    answer = await _pair_with_proof(admin, tenant="acme", previous=proof, new_key=key)
    assert answer["http_status"] == 200 and answer["retired"] is None
    assert await _status(admin, theirs.agent_id, tenant="other") == "offline"


async def test_a_malformed_proof_is_a_bad_request_and_uses_no_token(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    token = parse_token(await admin.token("acme"))
    body = {
        "token_secret": token.secret,
        "public_key": public_key_b64(generate_private_key()),
        "name": "host-2",
        "facts": {},
    }
    for previous in ({"agent_id": 7}, {"agent_id": "ag_1\nforged log line", "signature": "x"}):
        async with admin.http.post(
            token.url + "/agent/v1/pair", json={**body, "previous": previous}
        ) as resp:
            answer = await resp.json()
        assert resp.status == 400 and "previous" in answer["message"], answer
    answers = await admin.ok("GET", "/admin/v1/tenants/acme/agents")
    assert answers["agents"] == []
    # The token is not used up: the same one pairs without the proof.
    async with admin.http.post(token.url + "/agent/v1/pair", json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
