"""The API served from a thread of its own, for blocking clients (schemathesis)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.api import create_app
from agent.connectors.registry import default_registry
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore

from .conftest import SECRETS, publish
from .flows import ALL


class LiveServer:
    """A real store, runner and API on 127.0.0.1, owned by one thread and its loop.

    The SQLite connection belongs to the thread that opened it, so everything
    is built inside the server's own loop.
    """

    def __init__(
        self, state_dir: Path, *, token: str | None, flows: Sequence[dict[str, Any]] = ALL
    ) -> None:
        self.state_dir = state_dir
        self.flows = flows
        self.token = token
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="api-live-server", daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the API server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = SqliteStore.open(self.state_dir, synchronous="off")
        registry = default_registry()
        try:
            publish(store, *self.flows)
            runner = Runner(
                store=store, catalog=Catalog(store), connectors=registry, secrets=SECRETS
            )
            app_runner = web.AppRunner(create_app(runner=runner, token=self.token))
            await app_runner.setup()
            site = web.TCPSite(app_runner, "127.0.0.1", 0)
            await site.start()
            port = app_runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()
            await app_runner.cleanup()
        finally:
            await registry.close_all()
            store.close()
