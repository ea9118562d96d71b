"""Real processes and real servers for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


def run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env()
    )


def spawn_agent(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        agent_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def write_flow(directory: Path, doc: dict[str, Any]) -> Path:
    path = directory / f"{doc['id']}.json"
    path.write_text(json.dumps(doc))
    return path


def wait_for(predicate: Callable[[], bool], *, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def run_rows(state_dir: Path) -> list[tuple[str, str, str]]:
    """(run_id, status, state) of every run, read through a separate connection."""
    db = state_dir / "state.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return list(conn.execute("SELECT run_id, status, state FROM runs"))
    except sqlite3.Error:
        return []


class StallingServer:
    """A real HTTP server on loopback that stalls the first call to /slow.

    Records every Idempotency-Key it sees; ``release()`` lets stalled calls
    finish.  Runs its own event loop in a thread so it outlives the agent
    processes a test kills.
    """

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _slow(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers.get("Idempotency-Key", ""))
        body = await request.json()
        assert self._release is not None
        if len(self.keys) == 1:
            await self._release.wait()
        return web.json_response({"id": f"T-{body['amount']}", "seen": len(self.keys)}, status=201)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._release = asyncio.Event()
            app = web.Application()
            app.router.add_post("/slow", self._slow)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def __enter__(self) -> StallingServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def release(self) -> None:
        assert self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    def __exit__(self, *exc: object) -> None:
        self.release()

        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
