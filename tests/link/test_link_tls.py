"""TLS with a test CA: the right CA is accepted, a wrong CA or hostname refused."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from agent.daemon import Agent
from agent.identity import load_private_key
from agent.link.pairing import PairingFailed
from agent.link.state import LinkState, read_link_status
from agent.link.transport import PlaintextRefused
from tests.support.net import serve_app

from .linkhelpers import AgentUnderTest, Cp, until, within
from .proxy import ConnectProxy


def _server_context(ca: trustme.CA, *hosts: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(context)
    return context


def _ca_file(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_cp(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[Cp]:
    handle = await Cp(tmp_path / "cp", tls=_server_context(ca, "127.0.0.1", "localhost")).start()
    await handle.tenant("acme")
    try:
        yield handle
    finally:
        await handle.stop()


async def test_the_right_ca_pairs_and_links_over_tls(
    tmp_path: Path, ca: trustme.CA, tls_cp: Cp
) -> None:
    assert tls_cp.url.startswith("https://")
    under_test = AgentUnderTest(tmp_path / "agent", ca_file=_ca_file(ca, tmp_path / "ca.pem"))
    try:
        identity = await under_test.pair(await tls_cp.token())
        assert identity.url == tls_cp.url
        agent = await under_test.start()
        assert agent.link.options.url.startswith("wss://")
        assert read_link_status(agent.store).state is LinkState.CONNECTED
    finally:
        await under_test.stop()


async def test_a_wrong_ca_is_refused_for_pairing_and_for_the_link(
    tmp_path: Path, ca: trustme.CA, tls_cp: Cp
) -> None:
    wrong = _ca_file(trustme.CA(), tmp_path / "wrong.pem")
    under_test = AgentUnderTest(tmp_path / "agent", ca_file=wrong)
    try:
        with pytest.raises(PairingFailed) as failed:
            await under_test.pair(await tls_cp.token())
        assert "not trusted" in failed.value.message
        assert failed.value.hint is not None and "--ca-file" in failed.value.hint
        # Paired with the right CA, then started with the wrong one: no link.
        under_test.configure(ca_file=_ca_file(ca, tmp_path / "ca.pem"))
        await under_test.pair(await tls_cp.token())
        under_test.configure(ca_file=wrong)
        agent = await under_test.start(connected=False)
        await until(
            lambda: (read_link_status(agent.store).detail or "").find("certificate") >= 0,
            "the refused certificate recorded",
        )
        assert agent.link.sessions == 0
        assert read_link_status(agent.store).state is LinkState.DISCONNECTED
    finally:
        await under_test.stop()


async def test_a_certificate_for_another_host_is_refused(tmp_path: Path, ca: trustme.CA) -> None:
    handle = await Cp(tmp_path / "cp", tls=_server_context(ca, "cp.example")).start()
    under_test = AgentUnderTest(tmp_path / "agent", ca_file=_ca_file(ca, tmp_path / "ca.pem"))
    try:
        await handle.tenant("acme")
        with pytest.raises(PairingFailed) as failed:
            await under_test.pair(await handle.token())
        assert "not trusted" in failed.value.message
        assert "127.0.0.1" in failed.value.message
    finally:
        if under_test.store is not None:
            under_test.store.close()
        await handle.stop()


async def test_a_plaintext_link_to_a_remote_host_is_refused(
    tmp_path: Path, cp: Cp, agent: AgentUnderTest
) -> None:
    assert agent.identity is not None
    remote = replace(agent.identity, url="http://192.0.2.10:8700")
    with pytest.raises(PlaintextRefused):
        Agent(
            agent.settings,
            store=agent.open_store(),
            identity=remote,
            key=load_private_key(agent.settings.state_dir),
        )
    # Allowed explicitly, it is accepted (with a warning in the log).
    allowed = replace(agent.settings, allow_plaintext=True)
    built = Agent(
        allowed,
        store=agent.open_store(),
        identity=remote,
        key=load_private_key(agent.settings.state_dir),
    )
    assert built.link.options.url == "ws://192.0.2.10:8700/agent/v1/connect"
    await within(built.registry.close_all(), "closing the registry")


async def test_https_proxy_is_honoured_for_pairing_and_the_link(
    tmp_path: Path, ca: trustme.CA, tls_cp: Cp, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await ConnectProxy().start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    under_test = AgentUnderTest(tmp_path / "agent", ca_file=_ca_file(ca, tmp_path / "ca.pem"))
    try:
        await under_test.pair(await tls_cp.token())
        await under_test.start()
    finally:
        await under_test.stop()
        await proxy.stop()
    # Both went through the tunnel, and TLS was verified end to end through it.
    assert proxy.targets == [f"127.0.0.1:{tls_cp.port}"] * 2


async def test_a_link_redirect_to_another_host_is_refused(
    tmp_path: Path, cp: Cp, agent: AgentUnderTest
) -> None:
    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://localhost:{cp.port}/agent/v1/connect")

    app = web.Application()
    app.router.add_get("/agent/v1/connect", bounce)
    server = await serve_app(app)
    assert agent.identity is not None
    agent.identity = replace(agent.identity, url=server.url)
    try:
        started = await agent.start(connected=False)
        await until(
            lambda: "another host" in (read_link_status(started.store).detail or ""),
            "the refused redirect recorded",
        )
        assert started.link.sessions == 0
    finally:
        await agent.stop()
        await server.close()
