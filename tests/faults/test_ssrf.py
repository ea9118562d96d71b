"""Case 32: the SSRF matrix against the http connector, run by the real runner.

The guard is configured as a locked-down site would: ``http_deny_networks``
holds every private range (loopback included, which is allowed by default)
and ``http_allow_networks`` opens 127.0.0.2/32 alone, which stands for a
public service here (no traffic may leave this machine).  An "internal"
service listens on 127.0.0.1 and [::1]; it must never see a request.
Names resolve through a dnslib server on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.connectors.guard import PRIVATE_NETWORKS
from agent.connectors.registry import default_registry
from agent.flow.model import FlowInvalid, parse_flow
from agent.link.dispatch import TimedCatalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore
from tests.support.net import LocalServer, serve_app

from .conftest import Record
from .dns import DnsServer, LoopbackResolver
from .harness import LoopThread


@dataclass
class Listener:
    host: str
    port: int = 0
    hits: list[str] = field(default_factory=list)
    redirect: str | None = None
    server: LocalServer | None = None

    async def start(self) -> Listener:
        async def handle(request: web.Request) -> web.Response:
            self.hits.append(f"{request.method} {request.path}")
            if self.redirect is not None:
                raise web.HTTPFound(self.redirect)
            return web.json_response({"id": "public"})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.server = await serve_app(app, host=self.host, port=self.port, access_log=None)
        self.port = self.server.port
        return self


@dataclass
class World:
    internal: Listener
    internal6: Listener
    public: Listener
    bounce: Listener
    dns: DnsServer


@pytest.fixture
def world(harness: LoopThread) -> Iterator[World]:
    async def up() -> World:
        public = await Listener("127.0.0.2").start()
        internal = await Listener("127.0.0.1", public.port).start()  # same port: rebinding
        internal6 = await Listener("::1").start()
        bounce = await Listener("127.0.0.2").start()
        bounce.redirect = f"http://127.0.0.1:{internal.port}/admin"
        dns = await DnsServer(
            {
                "rebind.test": [["127.0.0.2"], ["127.0.0.1"]],  # public first, loopback after
                "both.test": [["127.0.0.1", "127.0.0.2"]],
                "inside.test": [["127.0.0.1"]],
                "metadata.test": [["169.254.169.254"]],
                "mapped.test": [["::ffff:127.0.0.1"]],
            }
        ).start()
        return World(internal, internal6, public, bounce, dns)

    found = harness.call(up())
    try:
        yield found
    finally:

        async def down() -> None:
            for listener in (found.internal, found.internal6, found.public, found.bounce):
                if listener.server is not None:
                    await listener.server.close()
            found.dns.close()

        harness.call(down())


def _flow(base_url: str) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "probe",
        "values": {"got": {"type": "string", "access": "output"}},
        "connectors": {"target": {"type": "http", "base_url": base_url, "timeout": 5}},
        "start": "call",
        "elements": {
            "call": {
                "type": "message",
                "connector": "target",
                "action": "GET /",
                "outputs": {"got": "body.id"},
                "next": "done",
            },
            "done": {"type": "end"},
        },
    }


async def _run(base_url: str, state: Path, dns_port: int) -> dict[str, Any]:
    registry = default_registry(
        http_deny_networks=PRIVATE_NETWORKS,
        http_allow_networks=["127.0.0.2/32"],
        resolver=LoopbackResolver(dns_port),
    )
    try:
        flow = parse_flow(_flow(base_url))
    except FlowInvalid as exc:  # refused before any run: the flow does not validate
        await registry.close_all()
        message = "; ".join(f"{i.path}: {i.message}" for i in exc.issues)
        return {"status": "failed", "error": {"message": f"invalid flow: {message}"}}
    store = SqliteStore.open(state, synchronous="off")
    try:
        catalog = TimedCatalog(store, local=[flow])
        runner = Runner(store=store, catalog=catalog, connectors=registry)
        return await runner.start("probe", {})
    finally:
        await registry.close_all()
        store.close()


def test_32_ssrf_matrix(tmp_path: Path, world: World, record: Record) -> None:
    """Case 32. Every address form of loopback, link-local metadata, 10/8, a redirect
    into loopback, file:// and gopher://, and names that resolve inside, including a
    rebinding name that answers a public address first and loopback after.

    Pass: all blocked with a message saying why, the internal services see
    no request at all, and where a name was allowed the connection went to
    the address the guard validated (the rebinding name's first answer),
    never to one resolved later.
    """
    p, p6 = world.internal.port, world.internal6.port
    blocked = {
        "127.0.0.1": f"http://127.0.0.1:{p}",
        "::1": f"http://[::1]:{p6}",
        "[::ffff:127.0.0.1]": f"http://[::ffff:127.0.0.1]:{p}",
        "2130706433": f"http://2130706433:{p}",
        "0177.0.0.1": f"http://0177.0.0.1:{p}",
        "169.254.169.254": "http://169.254.169.254",
        "10/8": "http://10.0.0.1",
        "302 to internal": f"http://127.0.0.2:{world.bounce.port}",
        "file://": "file:///etc/passwd",
        "gopher://": f"gopher://127.0.0.1:{p}",
        "name inside": f"http://inside.test:{p}",
        "name to metadata": "http://metadata.test",
        "name to mapped loopback": f"http://mapped.test:{p}",
    }
    loop_state = iter(range(1000))
    errors: dict[str, str] = {}
    for name, url in blocked.items():
        result = asyncio.run(_run(url, tmp_path / f"s{next(loop_state)}", world.dns.port))
        assert result["status"] == "failed", (name, result)
        errors[name] = result["error"]["message"]
        words = ("refused", "not allowed", "only http", "must be an http")
        assert any(w in errors[name] for w in words), errors[name]

    # Rebinding: the first answer is allowed and is where the connection goes ...
    first = asyncio.run(_run(f"http://rebind.test:{p}", tmp_path / "r1", world.dns.port))
    assert first["status"] == "completed" and first["outputs"]["got"] == "public"
    # ... a later lookup (a new connector, no cache) meets loopback and is refused.
    second = asyncio.run(_run(f"http://rebind.test:{p}", tmp_path / "r2", world.dns.port))
    assert second["status"] == "failed" and "127.0.0.1" in second["error"]["message"]
    # A name with an inside and an outside address: only the outside one is used.
    mixed = asyncio.run(_run(f"http://both.test:{p}", tmp_path / "r3", world.dns.port))
    assert mixed["status"] == "completed"

    assert world.internal.hits == [] and world.internal6.hits == []
    assert world.bounce.hits == ["GET /"]  # the redirect was followed to the guard, no further
    assert world.public.hits == ["GET /", "GET /"]
    rebinding = "connected to the validated address; the later loopback answer refused"
    record(32, blocked=sorted(blocked), internal_hits=0, errors=errors, rebinding=rebinding)
