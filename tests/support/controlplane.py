"""The reference control plane served in this process, on loopback.

``Cp`` keeps its port across restarts, so a restarted control plane is found
again at the URL an agent was paired with.  Nothing is mocked.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from controlplane.app import RunningServer, start_server
from controlplane.service import ControlPlane
from controlplane.settings import Settings as CpSettings

from .net import free_port


class Cp:
    """The reference control plane, restartable on the same port and data.

    ``port`` 0 lets each start take any free port; by default one free port
    is chosen now and kept.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        region: str = "local",
        heartbeat: float = 20.0,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        public_url: str | None = None,
        clock: Callable[[], float] = time.time,
        port: int | None = None,
    ) -> None:
        self.settings = CpSettings(
            data_dir=data_dir, region=region, heartbeat=heartbeat, public_url=public_url
        )
        self.tls = tls
        self.host = host
        self.clock = clock
        self.port = free_port(host) if port is None else port
        self.server: RunningServer | None = None

    @property
    def cp(self) -> ControlPlane:
        assert self.server is not None, "the control plane is not running"
        return self.server.cp

    @property
    def url(self) -> str:
        assert self.server is not None, "the control plane is not running"
        return self.server.url

    async def start(self) -> Cp:
        cp = ControlPlane(self.settings, clock=self.clock)
        self.server = await start_server(cp, host=self.host, port=self.port, tls=self.tls)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    async def token(self, tenant: str = "acme", *, ttl: float = 600) -> str:
        return str((await self.cp.create_token(tenant, ttl=ttl))["token"])

    async def tenant(self, name: str = "acme") -> str:
        await self.cp.create_tenant(name)
        return name

    async def publish(self, doc: dict[str, Any], tenant: str = "acme") -> int:
        flow, _ = await self.cp.publish(tenant, doc)
        return int(flow.version)

    def events(self, agent_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.cp.store.events(agent_id, after=len(found), limit=10_000)
            if not page:
                return found
            found.extend(page)


@asynccontextmanager
async def running_cp(
    data_dir: Path, *, tenant: str | None = "acme", **options: Any
) -> AsyncIterator[Cp]:
    """A started ``Cp`` with ``tenant`` created, stopped when the block ends."""
    handle = await Cp(data_dir, **options).start()
    try:
        if tenant is not None:
            await handle.tenant(tenant)
        yield handle
    finally:
        await handle.stop()
