"""Tenants, pairing tokens and POST /agent/v1/pair against the real server."""

from __future__ import annotations

import asyncio
import sqlite3
import stat

from cphelpers import Admin, FakeClock, pair

from agent.protocol.signing import (
    check_signing_key,
    fingerprint,
    generate_private_key,
    parse_token,
    public_key_b64,
)
from controlplane.app import RunningServer


def _pair_body(secret: str) -> dict[str, object]:
    return {
        "token_secret": secret,
        "public_key": public_key_b64(generate_private_key()),
        "name": "host",
        "facts": {"hostname": "host", "agent_version": "0.1.0"},
    }


async def _post_pair(admin: Admin, secret: str) -> tuple[int, dict[str, object]]:
    async with admin.http.post(admin.url + "/agent/v1/pair", json=_pair_body(secret)) as resp:
        return resp.status, await resp.json()


async def test_token_carries_url_region_and_key_fingerprint(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    token = parse_token(await admin.token(tenant))
    assert token.url == server.url
    assert token.region == "eu-1"
    assert token.fp == fingerprint(server.cp.signing_key)


async def test_pair_happy_path(admin: Admin, tenant: str, server: RunningServer) -> None:
    token = parse_token(await admin.token(tenant))
    paired = await pair(admin)
    answer = paired.answer
    assert answer["agent_id"].startswith("ag_")
    assert answer["tenant"] == "acme"
    assert answer["region"] == "eu-1"
    assert answer["url"] == server.url
    # What the agent must check before storing anything.
    check_signing_key(expected_fp=token.fp, signing_key=answer["signing_key"])
    agents = (await admin.ok("GET", "/admin/v1/tenants/acme/agents"))["agents"]
    assert [(a["id"], a["name"], a["status"], a["version"]) for a in agents] == [
        (paired.agent_id, "host-1", "offline", "0.1.0")
    ]


async def test_token_works_once(admin: Admin, tenant: str) -> None:
    secret = parse_token(await admin.token(tenant)).secret
    assert (await _post_pair(admin, secret))[0] == 200
    status, answer = await _post_pair(admin, secret)
    assert status == 401
    assert answer["error"] == "token_used"
    assert "already used" in str(answer["message"])


async def test_two_concurrent_pairings_with_one_token_exactly_one_wins(
    admin: Admin, tenant: str
) -> None:
    secret = parse_token(await admin.token(tenant)).secret
    results = await asyncio.gather(*(_post_pair(admin, secret) for _ in range(4)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 401, 401, 401]
    assert {a["error"] for s, a in results if s == 401} == {"token_used"}
    agents = (await admin.ok("GET", "/admin/v1/tenants/acme/agents"))["agents"]
    assert len(agents) == 1


async def test_expired_token(admin: Admin, tenant: str, clock: FakeClock) -> None:
    secret = parse_token(await admin.token(tenant, ttl=600)).secret
    other = parse_token(await admin.token(tenant)).secret
    clock.advance(601)
    status, answer = await _post_pair(admin, secret)
    assert (status, answer["error"]) == (401, "token_expired")
    # The default lifetime is 24 hours.
    assert (await _post_pair(admin, other))[0] == 200
    late = parse_token(await admin.token(tenant)).secret
    clock.advance(24 * 3600 + 1)
    assert (await _post_pair(admin, late))[1]["error"] == "token_expired"


async def test_unknown_or_tampered_token(admin: Admin, tenant: str) -> None:
    secret = parse_token(await admin.token(tenant)).secret
    tampered = secret[:-2] + ("AA" if secret[-2:] != "AA" else "BB")
    status, answer = await _post_pair(admin, tampered)
    assert (status, answer["error"]) == (401, "token_unknown")
    # The real token is untouched by the failed attempt.
    assert (await _post_pair(admin, secret))[0] == 200


async def test_bad_pair_requests(admin: Admin, tenant: str) -> None:
    secret = parse_token(await admin.token(tenant)).secret
    for body in (
        {**_pair_body(secret), "public_key": "not-a-key"},
        {**_pair_body(secret), "name": ""},
        {"public_key": "x"},
        [1, 2],
    ):
        async with admin.http.post(admin.url + "/agent/v1/pair", json=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "bad_request"
    # None of those consumed the token.
    assert (await _post_pair(admin, secret))[0] == 200


async def test_only_the_secret_hash_is_stored(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    token_text = await admin.token(tenant)
    secret = parse_token(token_text).secret
    await _post_pair(admin, secret)
    data = server.cp.settings.data_dir
    conn = sqlite3.connect(data / "controlplane.db")
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert secret not in dump
    assert token_text not in dump
    for path in data.iterdir():
        assert secret.encode() not in path.read_bytes()


async def test_data_directory_modes(server: RunningServer) -> None:
    data = server.cp.settings.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("admin.key", "signing.key", "controlplane.db"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert (data / "admin.key").read_text().strip() == server.cp.admin_key
