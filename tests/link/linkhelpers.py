"""The real control plane and a real agent, in this process, on 127.0.0.1.

``Cp`` wraps the reference control plane (its aiohttp server on a port kept
across restarts, so a restarted control plane is found again at the URL the
agent was paired with).  ``AgentUnderTest`` pairs over real HTTP, then runs
the assembled ``Agent`` (store, runner, link) as a task.  Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.daemon import Agent
from agent.identity import Identity, load_private_key
from agent.link.pairing import pair
from agent.settings import Settings
from agent.store.sqlite import SqliteStore
from controlplane.app import RunningServer, start_server
from controlplane.service import ControlPlane
from controlplane.settings import Settings as CpSettings

# Guards against a hang; never a timing assertion.
STEP = 15.0

HELLO: dict[str, Any] = {
    "format": "flow/v1",
    "id": "hello",
    "values": {
        "name": {"type": "string", "access": "input", "default": "world"},
        "greeting": {"type": "string", "access": "output"},
    },
    "start": "greet",
    "elements": {
        "greet": {
            "type": "operator",
            "operations": [{"set": "greeting", "to": "Hello, {{ name }}!"}],
            "next": "done",
        },
        "done": {"type": "end"},
    },
}

PAGE: dict[str, Any] = {
    "format": "flow/v1",
    "id": "approve",
    "values": {"note": {"type": "string", "access": "output", "default": "secret-ish"}},
    "start": "ask",
    "elements": {
        "ask": {
            "type": "page",
            "title": "Note: {{ note }}",
            "fields": [{"value": "note", "label": "Note"}],
            "outcomes": [{"id": "ok", "next": "done"}],
        },
        "done": {"type": "end"},
    },
}


def wait_flow(seconds: float) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "sleepy",
        "start": "nap",
        "elements": {
            "nap": {"type": "wait", "seconds": seconds, "next": "done"},
            "done": {"type": "end"},
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(check: Callable[[], bool], what: str, *, timeout: float = STEP) -> None:
    """Poll ``check`` until it holds; the timeout only guards against a hang."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class Cp:
    """The reference control plane, restartable on the same port and data."""

    def __init__(
        self,
        data_dir: Path,
        *,
        region: str = "local",
        heartbeat: float = 20.0,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        public_url: str | None = None,
    ) -> None:
        self.settings = CpSettings(
            data_dir=data_dir, region=region, heartbeat=heartbeat, public_url=public_url
        )
        self.tls = tls
        self.host = host
        self.port = free_port()
        self.server: RunningServer | None = None

    @property
    def cp(self) -> ControlPlane:
        assert self.server is not None
        return self.server.cp

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def start(self) -> Cp:
        cp = ControlPlane(self.settings, clock=time.time)
        self.server = await start_server(cp, host=self.host, port=self.port, tls=self.tls)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

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


class AgentUnderTest:
    """One agent: a state directory, paired over HTTP, served as a task."""

    def __init__(self, state_dir: Path, **settings: Any) -> None:
        defaults: dict[str, Any] = {"timer_interval": 0.05, "drain_timeout": 5.0}
        self.settings = Settings(state_dir=state_dir, **{**defaults, **settings})
        self.store: SqliteStore | None = None
        self.agent: Agent | None = None
        self.identity: Identity | None = None
        self._task: asyncio.Task[None] | None = None

    def configure(self, **changes: Any) -> None:
        self.settings = replace(self.settings, **changes)

    def open_store(self) -> SqliteStore:
        if self.store is None:
            self.store = SqliteStore.open(self.settings.state_dir, synchronous="normal")
        return self.store

    async def pair(self, token: str) -> Identity:
        result = await pair(
            token,
            state_dir=self.settings.state_dir,
            store=self.open_store(),
            ca_file=self.settings.ca_file,
            allow_plaintext=self.settings.allow_plaintext,
        )
        self.identity = result.identity
        return result.identity

    async def start(self, *, connected: bool = True) -> Agent:
        from agent.link.pairing import adopt_identity

        store = self.open_store()
        assert self.identity is not None
        adopt_identity(store, self.identity)
        self.agent = Agent(
            self.settings,
            store=store,
            identity=self.identity,
            key=load_private_key(self.settings.state_dir),
        )
        self._task = asyncio.get_running_loop().create_task(self.agent.serve())
        await within(self.agent.ready.wait(), "the agent to start")
        if connected:
            await within(self.agent.link.ready.wait(), "the agent to connect")
        return self.agent

    async def stop(self) -> None:
        if self.agent is not None and self._task is not None:
            self.agent.request_stop()
            await within(self._task, "the agent to stop")
            self._task = None
        if self.store is not None:
            self.store.close()
            self.store = None

    @property
    def a(self) -> Agent:
        assert self.agent is not None
        return self.agent


async def within(waiter: Awaitable[Any], what: str, *, timeout: float = STEP) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await waiter
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
