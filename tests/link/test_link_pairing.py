"""Pairing against the real control plane: tokens, keys, files, refusals."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from aiohttp import web

from agent.errors import OperationError
from agent.identity import IDENTITY_FILE, KEY_FILE, load_identity, load_private_key
from agent.link.pairing import PairingFailed, PairingRefused, wipe_token_file
from agent.link.state import LinkState, read_link_status
from agent.link.transport import PlaintextRefused
from agent.protocol.errors import TokenMalformed
from agent.protocol.signing import PairingToken, parse_token, public_key_b64
from tests.support.net import serve_app

from .linkhelpers import AgentUnderTest, Cp


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_pairing_stores_identity_privately_and_never_the_token(
    tmp_path: Path, cp: Cp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await cp.token()
    under_test = AgentUnderTest(tmp_path / "agent")
    try:
        identity = await under_test.pair(token)
    finally:
        if under_test.store is not None:
            under_test.store.close()
    state = tmp_path / "agent"
    assert identity.tenant == "acme" and identity.region == "local"
    assert identity.url == cp.url
    assert identity.signing_key == public_key_b64(cp.cp.signing_key)
    assert load_identity(state) == identity
    agent_row = cp.cp.store.get_agent(identity.agent_id)
    assert agent_row is not None and agent_row.tenant == "acme"
    # The control plane holds the public half of the key made here.
    assert agent_row.public_key == public_key_b64(load_private_key(state))
    assert _mode(state) == 0o700
    for name in (IDENTITY_FILE, KEY_FILE, "state.db"):
        assert _mode(state / name) == 0o600, name
    secret = parse_token(token).secret
    for path in state.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
            assert token.encode() not in path.read_bytes(), path
    assert not list(state.glob(".*.tmp"))
    assert secret not in caplog.text and "paired as" in caplog.text


async def test_a_used_token_is_refused_as_used(tmp_path: Path, cp: Cp) -> None:
    token = await cp.token()
    first = AgentUnderTest(tmp_path / "one")
    second = AgentUnderTest(tmp_path / "two")
    try:
        await first.pair(token)
        with pytest.raises(PairingRefused) as refused:
            await second.pair(token)
    finally:
        for under_test in (first, second):
            if under_test.store is not None:
                under_test.store.close()
    assert refused.value.code == "token_used"
    assert "already used" in refused.value.message
    assert load_identity(tmp_path / "two") is None


async def test_an_expired_token_is_refused_as_expired(tmp_path: Path, cp: Cp) -> None:
    token = await cp.token(ttl=1)
    row = cp.cp.db.conn.execute("UPDATE tokens SET expires_at = expires_at - 10")
    assert row.rowcount == 1
    under_test = AgentUnderTest(tmp_path / "agent")
    try:
        with pytest.raises(PairingRefused) as refused:
            await under_test.pair(token)
    finally:
        if under_test.store is not None:
            under_test.store.close()
    assert refused.value.code == "token_expired"
    assert "expired" in str(refused.value)


async def test_a_tampered_secret_is_unknown_and_a_garbled_token_malformed(
    tmp_path: Path, cp: Cp
) -> None:
    token = parse_token(await cp.token())
    flipped = token.secret[:-2] + ("AA" if token.secret[-2:] != "AA" else "BB")
    tampered = PairingToken(url=token.url, region=token.region, fp=token.fp, secret=flipped)
    under_test = AgentUnderTest(tmp_path / "agent")
    try:
        with pytest.raises(PairingRefused) as refused:
            await under_test.pair(tampered.encode())
        with pytest.raises(TokenMalformed) as garbled:
            await under_test.pair(token.encode()[:-30])
    finally:
        if under_test.store is not None:
            under_test.store.close()
    assert refused.value.code == "token_unknown"
    assert "garbled" in garbled.value.message or "lacks" in garbled.value.message


async def test_a_wrong_control_plane_key_aborts_before_anything_is_stored(
    tmp_path: Path, cp: Cp
) -> None:
    other = await Cp(tmp_path / "other").start()
    try:
        real = parse_token(await cp.token())
        # A token that points at `other` but pins `cp`'s key: someone else answers.
        await other.tenant("acme")
        lure = parse_token(await other.token())
        mixed = PairingToken(url=lure.url, region=lure.region, fp=real.fp, secret=lure.secret)
        under_test = AgentUnderTest(tmp_path / "agent")
        try:
            with pytest.raises(PairingFailed) as failed:
                await under_test.pair(mixed.encode())
        finally:
            if under_test.store is not None:
                under_test.store.close()
    finally:
        await other.stop()
    assert "does not match the fingerprint" in failed.value.message
    assert not (tmp_path / "agent" / IDENTITY_FILE).exists()
    assert not (tmp_path / "agent" / KEY_FILE).exists()


async def test_plaintext_to_a_remote_host_is_refused_before_any_connection(
    tmp_path: Path, cp: Cp
) -> None:
    token = parse_token(await cp.token())
    remote = PairingToken(
        url="http://192.0.2.10:8700", region=token.region, fp=token.fp, secret=token.secret
    )
    under_test = AgentUnderTest(tmp_path / "agent")
    try:
        with pytest.raises(PlaintextRefused) as refused:
            await under_test.pair(remote.encode())
    finally:
        if under_test.store is not None:
            under_test.store.close()
    assert "not a loopback address" in refused.value.message
    # The token was never sent: it still pairs.
    assert (
        cp.cp.db.conn.execute("SELECT count(*) FROM tokens WHERE used_at IS NULL").fetchone()[0]
        == 1
    )


async def test_a_redirect_to_another_host_is_refused(tmp_path: Path, cp: Cp) -> None:
    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("http://localhost:9/agent/v1/pair")

    app = web.Application()
    app.router.add_post("/agent/v1/pair", bounce)
    server = await serve_app(app)
    token = parse_token(await cp.token())
    redirecting = PairingToken(
        url=server.url, region=token.region, fp=token.fp, secret=token.secret
    )
    under_test = AgentUnderTest(tmp_path / "agent")
    try:
        with pytest.raises(PairingFailed) as failed:
            await under_test.pair(redirecting.encode())
    finally:
        if under_test.store is not None:
            under_test.store.close()
        await server.close()
    assert "redirect to http://localhost:9/agent/v1/pair" in failed.value.message


async def test_repairing_resets_the_outbox_and_the_link_status(
    tmp_path: Path, cp: Cp, agent: AgentUnderTest
) -> None:
    await agent.start()
    first = agent.identity
    assert first is not None
    await cp.publish(
        {"format": "flow/v1", "id": "x", "start": "e", "elements": {"e": {"type": "end"}}}
    )
    await agent.stop()
    store = agent.open_store()
    status = read_link_status(store)
    assert status.state is LinkState.DISCONNECTED
    second = await agent.pair(await cp.token())
    assert second.agent_id != first.agent_id
    assert read_link_status(store).state is LinkState.NEVER
    assert store.get_meta("link.agent_id") == second.agent_id


def test_damaged_identity_says_how_to_recover(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    (tmp_path / IDENTITY_FILE).write_text(json.dumps({"agent_id": "ag_1"}))
    with pytest.raises(OperationError) as damaged:
        load_identity(tmp_path)
    assert "damaged" in damaged.value.message
    assert damaged.value.hint is not None and "--force" in damaged.value.hint


def test_wiping_a_token_file_truncates_and_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("fp1.abc")
    linked = tmp_path / "hardlink"
    os.link(path, linked)
    assert wipe_token_file(path)
    assert not path.exists()
    # Truncated before the unlink: another name of the same file keeps nothing.
    assert linked.read_text() == ""
