"""Case 26: TLS negatives, for pairing and for a link already paired.

The agent reaches the real control plane (TLS, a trustme CA the agent
trusts) through a TCP proxy that also records the first bytes of every
connection.  The "attacker" then takes the path over: the proxy forwards to
a TLS endpoint of its own (a certificate from another CA, for another
host, expired, or a server that speaks only TLS 1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from .conftest import Record
from .harness import ROOT, ControlPlaneThread, Daemon, LoopThread, agent_env, free_port, wait_for
from .proxy import FaultProxy


class Recorder(FaultProxy):
    """A fault proxy that keeps the first bytes each client sent."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.first: list[bytes] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.read(5)
        self.first.append(head)
        await super()._accept(_Prefixed(reader, head), writer)  # type: ignore[arg-type]


class _Prefixed:
    """A reader that gives back the bytes already taken, then the rest."""

    def __init__(self, reader: asyncio.StreamReader, head: bytes) -> None:
        self._reader = reader
        self._head = head

    async def read(self, n: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return await self._reader.read(n)


def _server_context(ca: trustme.CA, *hosts: str, **cert: object) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts, **cert).configure_cert(context)  # type: ignore[arg-type]
    return context


async def _evil(context: ssl.SSLContext) -> asyncio.Server:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read(65536)
        writer.close()

    return await asyncio.start_server(swallow, "127.0.0.1", 0, ssl=context)


def _attackers(good: trustme.CA) -> dict[str, ssl.SSLContext]:
    old = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    good.issue_cert("127.0.0.1").configure_cert(old)
    with warnings.catch_warnings():  # setting an old version is what this server is for
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    now = dt.datetime.now(dt.UTC)
    return {
        "mitm (another CA)": _server_context(trustme.CA(), "127.0.0.1"),
        "wrong host": _server_context(good, "cp.example"),
        "expired": _server_context(
            good,
            "127.0.0.1",
            not_before=now - dt.timedelta(days=9),
            not_after=now - dt.timedelta(days=1),
        ),
        "TLS 1.1 only": old,
    }


def test_26_tls_negatives(
    tmp_path: Path, harness: LoopThread, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 26. A wrong CA (a MITM in the path), a certificate for another host, an
    expired one, a server offering only TLS 1.1: for pairing and for the link.

    Pass: every one refused (pairing exits 1 with a clear error and stores
    nothing; the link records why and starts no session), and no fallback:
    every connection the agent opened began with a TLS handshake record,
    never plaintext; back on the real path, the link comes back.
    """
    good = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    good.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    proxy: Recorder = harness.call(_started(Recorder(port)))
    cp = ControlPlaneThread(
        tmp_path / "cp",
        loop=harness,
        port=port,
        tls=_server_context(good, "127.0.0.1"),
        public_url=f"https://127.0.0.1:{proxy.port}",
    ).start()
    evil: list[asyncio.Server] = []
    try:
        cp.tenant("acme")
        env = {"FLOW_AGENT_CA_FILE": str(ca_file)}
        daemon = daemons(env=env)
        daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
        wait_for(daemon.connected, "the agent to pair over TLS", timeout=60)
        refusals: dict[str, str] = {}
        for name, context in _attackers(good).items():
            server = harness.call(_evil(context))
            evil.append(server)
            proxy.upstream = ("127.0.0.1", server.sockets[0].getsockname()[1])
            # Pairing through the attacker.
            state = tmp_path / f"pair-{len(refusals)}"
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "agent.cli",
                    "pair",
                    cp.token(),
                    "--state-dir",
                    str(state),
                    "--ca-file",
                    str(ca_file),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT,
                env=agent_env(),
            )
            assert done.returncode == 1, (name, done.stderr)
            # A TLS 1.1 server resets the handshake: the agent can only say it cannot reach it.
            clear = ("TLS", "certificate", "cannot reach the control plane")
            assert any(word in done.stderr for word in clear), (name, done.stderr)
            assert "Traceback" not in done.stderr
            assert not (state / "identity.json").exists()
            refusals[name] = done.stderr.splitlines()[0][:160]
            # The paired link, taken over: the agent restarts into the attacker.
            assert daemon.terminate() == 0
            attempts = len(proxy.first)
            daemon.start()
            wait_for(lambda n=attempts: len(proxy.first) > n, f"an attempt ({name})", timeout=60)
            wait_for(
                lambda: "stopped" not in (daemon.status()["link"].get("detail") or "x"),
                "the refusal recorded",
            )
            harness.call(asyncio.sleep(0.5))
            assert not daemon.connected()
            assert daemon.log_text().count("flow_agent.link: connected to") == 1, name
        proxy.upstream = ("127.0.0.1", port)
        wait_for(daemon.connected, "the link back on the real path", timeout=90)
        assert proxy.first and all(head.startswith(b"\x16\x03") for head in proxy.first)
        assert daemon.terminate() == 0
    finally:
        cp.stop()
        harness.call(proxy.stop())
        for server in evil:
            server.close()
    record(26, refused=sorted(refusals), connections=len(proxy.first), plaintext_attempts=0)


async def _started(proxy: Recorder) -> Recorder:
    await proxy.start()
    return proxy


async def _reset(proxy: FaultProxy) -> None:
    proxy.reset_all()


@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_26_plaintext_to_a_remote_host_is_refused_before_connecting(
    tmp_path: Path, scheme: str
) -> None:
    """Case 26, plaintext: a control plane at ``http://``/``ws://`` on a non-loopback address.

    Pass: refused before any connection (TEST-NET-1 is never reached), a clear
    error naming the setting that would allow it.
    """
    from agent.errors import OperationError
    from agent.link.transport import check_plaintext

    with pytest.raises(OperationError) as refused:
        check_plaintext(f"{scheme}://192.0.2.10:8700/agent/v1/connect", allow_plaintext=False)
    assert "refusing plaintext" in refused.value.message
    assert refused.value.hint is not None and "allow_plaintext" in refused.value.hint
