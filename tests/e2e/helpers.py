"""Real processes and real servers for end-to-end tests.

``wait_for`` and ``free_port`` are the shared ones of ``tests.support``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from controlplane.client import AdminClient
from tests.support.net import LocalServer, free_port, serve_app
from tests.support.waits import wait_for

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


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any FLOW_AGENT_ setting, the checkout importable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOW_AGENT_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def write_flow(directory: Path, doc: dict[str, Any]) -> Path:
    path = directory / f"{doc['id']}.json"
    path.write_text(json.dumps(doc))
    return path


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
        self._server: LocalServer | None = None

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
            self._server = await serve_app(app)
            self.port = self._server.port
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
            if self._server is not None:
                await self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class CpProcess:
    """``flow-controlplane serve`` on a fixed port, so a restart keeps the agent's URL."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    def start(self) -> CpProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "serve", "--data", str(self.data),
             "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=clean_env(),
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, line
        # Keep draining stdout so the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self.proc.stdout.read, daemon=True)
        self._drain.start()
        return self

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self._drain is not None:
            self._drain.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None

    def completed(self) -> set[str]:
        runs = self.admin.call("GET", "/admin/v1/tenants/acme/runs?limit=1000")["runs"]
        return {r["run_id"] for r in runs if r["status"] == "completed"}

    def online(self, agent_id: str) -> bool:
        agent = self.admin.call("GET", f"/admin/v1/tenants/acme/agents/{agent_id}")
        return bool(agent["status"] == "online")

    @property
    def admin(self) -> AdminClient:
        key = (self.data / "admin.key").read_text().strip()
        return AdminClient(url=self.url, admin_key=key, timeout=20)

    def token(self, tenant: str = "acme", ttl: str | None = None) -> str:
        body = {} if ttl is None else {"ttl": float(ttl)}
        answer = self.admin.call("POST", f"/admin/v1/tenants/{tenant}/tokens", body)
        return str(answer["token"])

    def events(self, agent_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            path = f"/admin/v1/tenants/acme/agents/{agent_id}/events?after={len(found)}&limit=1000"
            page = self.admin.call("GET", path)["events"]
            if not page:
                return found
            found.extend(page)


@contextmanager
def cp_process(data: Path, *, tenant: str = "acme") -> Iterator[CpProcess]:
    """A started ``CpProcess`` with ``tenant`` created, killed when the block ends."""
    server = CpProcess(data).start()
    try:
        server.admin.call("POST", "/admin/v1/tenants", {"name": tenant})
        yield server
    finally:
        server.kill()


__all__ = [
    "ROOT",
    "CpProcess",
    "StallingServer",
    "agent_cmd",
    "clean_env",
    "cp_process",
    "free_port",
    "run_agent",
    "run_rows",
    "spawn_agent",
    "wait_for",
    "write_flow",
]
