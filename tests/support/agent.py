"""An agent under test: a state directory, paired over real HTTP, served as a task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.connectors.registry import ConnectorRegistry
from agent.daemon import Agent
from agent.identity import Identity, load_private_key
from agent.link.pairing import adopt_identity, pair
from agent.settings import Settings
from agent.store.sqlite import SqliteStore

from .controlplane import Cp
from .waits import within


class AgentUnderTest:
    """One agent: pairs with a control plane over HTTP, then runs the assembled ``Agent``."""

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

    async def start(
        self, *, connected: bool = True, registry: ConnectorRegistry | None = None
    ) -> Agent:
        store = self.open_store()
        assert self.identity is not None
        adopt_identity(store, self.identity)
        self.agent = Agent(
            self.settings,
            store=store,
            identity=self.identity,
            key=load_private_key(self.settings.state_dir),
            registry=registry,
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


@asynccontextmanager
async def paired_agent(
    cp: Cp, state_dir: Path, *, tenant: str = "acme", **settings: Any
) -> AsyncIterator[AgentUnderTest]:
    """An agent paired with ``tenant`` of ``cp``, not started; stopped when the block ends."""
    under_test = AgentUnderTest(state_dir, **settings)
    try:
        await under_test.pair(await cp.token(tenant))
        yield under_test
    finally:
        await under_test.stop()
