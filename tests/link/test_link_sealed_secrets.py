"""Sealed secrets end to end: the real control plane, a real paired agent, loopback only.

The admin API seals a value to the agent's X25519 key, the link carries it,
the agent opens and stores it encrypted, and a flow sends it in a connector
header to a local HTTP server.  The plain value must appear nowhere but there.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.connectors.registry import default_registry
from agent.daemon import Agent
from agent.identity import load_private_key
from agent.link.pairing import adopt_identity, request_pairing
from agent.logs import RedactingSecrets
from agent.protocol.frames import SealedSecret, SecretPush
from agent.protocol.sealing import seal
from agent.protocol.signing import generate_private_key, parse_token, public_key_b64
from agent.secrets import SecretStore, SecretsView, load_sealing_key, public_key_text
from tests.support.net import serving

from .linkhelpers import AgentUnderTest, Cp, within

VALUE = "s3aled-Secr3t-v4lue-7f1c"


def erp_flow(port: int) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "erp",
        "values": {
            "token": {"type": "secret", "secret": "erp-token"},
            "status": {"type": "number", "access": "output"},
        },
        "connectors": {
            "erp": {
                "type": "http",
                "base_url": f"http://127.0.0.1:{port}",
                "headers": {"Authorization": "Bearer {{ token }}"},
                "timeout": 5,
            }
        },
        "start": "call",
        "elements": {
            "call": {
                "type": "message",
                "connector": "erp",
                "action": "GET /orders",
                "outputs": {"status": "status"},
                "next": "done",
            },
            "done": {"type": "end"},
        },
    }


@pytest.fixture
async def erp() -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def orders(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"orders": []})

    app = web.Application()
    app.router.add_get("/orders", orders)
    async with serving(app) as server:
        yield server.port, seen


async def start_with_vault(under: AgentUnderTest) -> SecretStore:
    """Start the agent as the daemon does: with its secret store behind the link."""
    store = under.open_store()
    assert under.identity is not None
    adopt_identity(store, under.identity)
    vault = SecretStore.for_store(store)
    secrets = RedactingSecrets(SecretsView(vault))
    under.agent = Agent(
        under.settings,
        store=store,
        identity=under.identity,
        key=load_private_key(under.settings.state_dir),
        registry=default_registry(secrets=secrets, state_dir=under.settings.state_dir),
        secrets=secrets,
        vault=vault,
    )
    under._task = asyncio.get_running_loop().create_task(under.agent.serve())
    await within(under.agent.ready.wait(), "the agent to start")
    await within(under.agent.link.ready.wait(), "the agent to connect")
    return vault


async def admin_post(cp: Cp, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{cp.url}/admin/v1/tenants/acme{path}",
            json=body,
            headers={"Authorization": f"Bearer {cp.cp.admin_key}"},
        ) as resp,
    ):
        return resp.status, await resp.json()


def bytes_under(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


async def test_pairing_sends_the_sealing_key_and_the_cp_keeps_it(
    cp: Cp, agent: AgentUnderTest
) -> None:
    assert agent.identity is not None
    record = cp.cp.store.get_agent(agent.identity.agent_id)
    assert record is not None
    assert record.sealing_key == public_key_text(load_sealing_key(agent.settings.state_dir))


async def test_a_secret_from_the_admin_api_reaches_a_connector_header_and_nothing_else(
    cp: Cp,
    agent: AgentUnderTest,
    erp: tuple[int, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port, seen = erp
    assert agent.identity is not None
    agent_id = agent.identity.agent_id
    await cp.publish(erp_flow(port))
    vault = await start_with_vault(agent)

    status, body = await admin_post(
        cp, f"/agents/{agent_id}/secrets", {"name": "erp-token", "value": VALUE}
    )
    assert (status, body) == (200, {"agent_id": agent_id, "name": "erp-token", "stored": True})
    assert vault.names() == ["erp-token"]

    run, _ = await cp.cp.dispatch_run("acme", flow="erp", agent_id=agent_id)
    done = await cp.cp.get_run("acme", run.id, wait=10)
    assert done.status == "completed", done
    assert seen == [f"Bearer {VALUE}"]

    await agent.stop()
    await cp.stop()
    needle = VALUE.encode()
    assert needle not in bytes_under(cp.settings.data_dir)
    assert needle not in bytes_under(agent.settings.state_dir)
    assert VALUE not in caplog.text
    assert all(VALUE not in str(r.args) for r in caplog.records)


async def test_a_tampered_seal_is_refused_and_nothing_is_stored(
    cp: Cp, agent: AgentUnderTest
) -> None:
    assert agent.identity is not None
    agent_id = agent.identity.agent_id
    vault = await start_with_vault(agent)
    record = cp.cp.store.get_agent(agent_id)
    assert record is not None and record.sealing_key is not None
    conn = cp.cp.hub.connection(agent_id)
    assert conn is not None

    good = seal(record.sealing_key, agent_id=agent_id, name="erp-token", value=VALUE)
    ct = good["ct"]
    tampered = {**good, "ct": ct[:-2] + ("AA" if ct[-2:] != "AA" else "BB")}
    ack = await cp.cp.hub.send_secret(
        conn, SecretPush(name="erp-token", sealed=SealedSecret(**tampered)), timeout=10
    )
    assert ack is not None and (ack.ok, ack.reason) == (False, "sealed_invalid")

    # Sealed to another agent id: the associated data does not match.
    other = seal(record.sealing_key, agent_id="ag_other", name="erp-token", value=VALUE)
    ack = await cp.cp.hub.send_secret(
        conn, SecretPush(name="erp-token", sealed=SealedSecret(**other)), timeout=10
    )
    assert ack is not None and (ack.ok, ack.reason) == (False, "sealed_invalid")

    # A valid seal under another clear name is refused too.
    ack = await cp.cp.hub.send_secret(
        conn, SecretPush(name="other-name", sealed=SealedSecret(**good)), timeout=10
    )
    assert ack is not None and (ack.ok, ack.reason) == (False, "sealed_invalid")
    assert vault.names() == []
    assert cp.cp.hub.connection(agent_id) is not None  # the link survived


async def test_an_agent_paired_without_a_sealing_key_gets_409(cp: Cp) -> None:
    # What an agent from before sealed secrets sends: no sealing_key.
    answer = await request_pairing(
        parse_token(await cp.token()),
        public_key=public_key_b64(generate_private_key()),
        ca_file=None,
        allow_plaintext=True,
    )
    status, body = await admin_post(
        cp, f"/agents/{answer['agent_id']}/secrets", {"name": "erp-token", "value": VALUE}
    )
    assert status == 409
    assert body["error"] == "no_sealing_key"
    assert "re-pair the agent to enable sealed secrets" in body["hint"]


async def test_an_offline_agent_gets_409_and_nothing_is_kept(cp: Cp, agent: AgentUnderTest) -> None:
    assert agent.identity is not None
    status, body = await admin_post(
        cp, f"/agents/{agent.identity.agent_id}/secrets", {"name": "erp-token", "value": VALUE}
    )
    assert (status, body["error"]) == (409, "agent_offline")
    assert VALUE.encode() not in bytes_under(cp.settings.data_dir)


async def test_the_cli_reads_the_value_from_stdin(cp: Cp, agent: AgentUnderTest) -> None:
    assert agent.identity is not None
    agent_id = agent.identity.agent_id
    vault = await start_with_vault(agent)
    argv = ["secret", "set", "erp-token", "--tenant", "acme", "--agent", agent_id]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controlplane.cli",
        *argv,
        "--url",
        cp.url,
        "--data",
        str(cp.settings.data_dir),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await within(proc.communicate(VALUE.encode() + b"\n"), "the cli")
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == f"erp-token stored on {agent_id}"
    assert vault.get("erp-token") == VALUE  # the trailing newline dropped
