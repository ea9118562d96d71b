"""Real parts for the fault suite: a control plane, an HTTP sink, agent daemons.

The control plane (the reference one) and the sink run in ``LoopThread``s,
event loops of their own in background threads, so a test can block, poll
and kill processes while they keep serving.  A ``LoopThread`` may join a
network namespace first: its sockets then live there.  Agents are real
``flow-agent run`` processes (``Daemon``), so a SIGKILL is a real one.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from agent.link.status import read_status
from controlplane.service import ControlPlane
from controlplane.settings import Settings as CpSettings
from tests.support.controlplane import Cp
from tests.support.net import LocalServer, serve_app
from tests.support.net import free_port as free_port  # the fault tests import it from here
from tests.support.waits import wait_for as poll

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def wait_for(check: Callable[[], bool], what: str, *, timeout: float = 30.0) -> float:
    """``tests.support.waits.wait_for`` with the fault suite's longer bound (a loaded machine)."""
    return poll(check, what, timeout=timeout)


def join_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (``ip netns add``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
    finally:
        os.close(fd)


class LoopThread:
    """An event loop in a daemon thread; ``call(coro)`` runs a coroutine there."""

    def __init__(self, *, name: str = "harness", netns: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._netns = netns
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        try:
            if self._netns is not None:
                join_netns(self._netns)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> LoopThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def call(self, work: Coroutine[Any, Any, T], *, timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def soon(self, fn: Callable[[], object]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.call(drain(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


class ControlPlaneThread:
    """The reference control plane (``Cp``: fixed port, restartable) in a ``LoopThread``."""

    def __init__(self, data_dir: Path, *, loop: LoopThread, **options: Any) -> None:
        """``options`` are ``Cp``'s: host, heartbeat, public_url, tls, clock, port."""
        self.loop = loop
        self.plane = Cp(data_dir, **options)

    @property
    def settings(self) -> CpSettings:
        return self.plane.settings

    @property
    def cp(self) -> ControlPlane:
        return self.plane.cp

    @property
    def url(self) -> str:
        # Known while stopped too: agents keep this URL across restarts.
        scheme = "https" if self.plane.tls is not None else "http"
        return f"{scheme}://{self.plane.host}:{self.plane.port}"

    @property
    def db_path(self) -> Path:
        from controlplane.service import DB_FILE

        return self.settings.data_dir / DB_FILE

    def start(self) -> ControlPlaneThread:
        self.loop.call(self.plane.start())
        return self

    def stop(self) -> None:
        if self.plane.server is not None:
            self.loop.call(self.plane.stop())

    def do(self, work: Callable[[ControlPlane], Awaitable[T]], *, timeout: float = 60.0) -> T:
        cp = self.cp

        async def run() -> T:
            return await work(cp)

        return self.loop.call(run(), timeout=timeout)

    def tenant(self, name: str = "acme") -> str:
        return self.loop.call(self.plane.tenant(name))

    def token(self, tenant: str = "acme", *, ttl: float = 600) -> str:
        return self.loop.call(self.plane.token(tenant, ttl=ttl))

    def publish(self, doc: dict[str, Any], tenant: str = "acme") -> int:
        return self.loop.call(self.plane.publish(doc, tenant))

    def dispatch(self, flow: str, *, tenant: str = "acme", **kwargs: Any) -> str | None:
        """Ask for a run; its id, or None when no agent is online to take it."""
        from controlplane.errors import ControlPlaneError

        async def go(cp: ControlPlane) -> str | None:
            try:
                run, _ = await cp.dispatch_run(tenant, flow=flow, **kwargs)
            except ControlPlaneError:
                return None
            return str(run.id)

        return self.do(go)

    def online(self, agent_id: str) -> bool:
        return self.do(lambda cp: _online(cp, agent_id))

    def read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows from the control plane's database, through a read-only connection."""
        return read_db(self.db_path, sql, params)


async def _online(cp: ControlPlane, agent_id: str) -> bool:
    return cp.hub.connection(agent_id) is not None


def read_db(path: Path, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


@dataclass
class SinkRequest:
    key: str
    path: str
    body: Any
    at: float


@dataclass
class Sink:
    """A real HTTP target that records every request and applies each key's effect once.

    ``effects`` maps an Idempotency-Key to the one answer given for it: a
    repeat of a key gets the same answer and changes nothing, as a careful
    API does.  ``hook`` runs after a request was recorded and its effect
    applied, before the answer is sent (a test kills the agent there).
    ``stall`` holds answers (not the recording) until released.
    """

    host: str = "127.0.0.1"
    port: int = 0
    requests: list[SinkRequest] = field(default_factory=list)
    effects: dict[str, dict[str, Any]] = field(default_factory=dict)
    hook: Callable[[SinkRequest], None] | None = None
    stall: bool = False
    _server: LocalServer | None = None
    _loop: LoopThread | None = None
    _release: asyncio.Event | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        entry = SinkRequest(
            key=request.headers.get("Idempotency-Key", ""),
            path=request.path,
            body=body,
            at=time.monotonic(),
        )
        self.requests.append(entry)
        answer = self.effects.get(entry.key)
        if answer is None or not entry.key:
            answer = {"id": f"T{len(self.effects) + 1}", "path": entry.path}
            self.effects[entry.key or f"(none {len(self.requests)})"] = answer
        if self.hook is not None:
            self.hook(entry)
        if self.stall and self._release is not None:
            await self._release.wait()
        return web.json_response(answer, status=201)

    def start(self, loop: LoopThread) -> Sink:
        self._loop = loop

        async def up() -> None:
            self._release = asyncio.Event()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._server = await serve_app(app, host=self.host, port=self.port, access_log=None)
            self.port = self._server.port

        loop.call(up())
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def release(self) -> None:
        self.stall = False
        if self._loop is not None and self._release is not None:
            self._loop.soon(self._release.set)

    def keys_of(self, run_id: str) -> set[str]:
        return {k for k in self.effects if k.startswith(f"{run_id}:")}

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self.release()
            self._loop.call(self._server.close())
            self._server = None


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOW_AGENT_")}
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("FLOW_AGENT_TIMER_INTERVAL", "0.1")
    env["FLOW_AGENT_API_LISTEN"] = "127.0.0.1:0"
    env["FLOW_AGENT_LOG_FORMAT"] = "text"
    env.update(extra)
    return env


class Daemon:
    """One ``flow-agent run`` process on a state directory; restartable, killable.

    Its log (stdout and stderr) goes to ``log`` (appended across restarts) for the tests to read.
    ``prefix`` wraps the command (``ip netns exec NS``, ``unshare -m ...``).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        log: Path,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.state_dir = state_dir
        self.log = log
        self.env = dict(env or {})
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        # Where this process sees state_dir from here (its mount namespace may differ).
        self.view: Callable[[], Path] | None = None

    @property
    def seen(self) -> Path:
        return self.state_dir if self.view is None else self.view()

    def command(self) -> list[str]:
        run = [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(self.state_dir)]
        return [*self.prefix, *run]

    def start(self, **env: str) -> Daemon:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=agent_env(**{**self.env, **env}),
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a prefix such as unshare included)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.kills += 1
        self.proc.wait(15)

    def terminate(self, *, timeout: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.alive():
            try:
                self.terminate(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def status(self) -> dict[str, Any]:
        if not (self.seen / "state.db").exists():
            return {"link": {"state": None}, "outbox": {"depth": None}, "identity": None}
        try:
            return read_status(self.seen).to_json()
        except Exception:  # a status read racing a start-up is retried by the caller
            return {"link": {"state": None}, "outbox": {"depth": None}, "identity": None}

    def connected(self) -> bool:
        """This process (not a killed one whose status was left behind) is connected."""
        status = self.status()
        daemon = status.get("daemon") or {}
        return bool(
            self.alive()
            and daemon.get("pid") == self.pid
            and status["link"]["state"] == "connected"
        )

    def agent_id(self) -> str:
        identity = self.status().get("identity") or {}
        return str(identity["agent_id"])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return read_db(self.seen / "state.db", sql, params)


def flow_doc(doc: dict[str, Any]) -> str:
    return json.dumps(doc)


def charge_flow(sink_url: str, *, flow_id: str = "charge", pause: float = 0.2) -> dict[str, Any]:
    """Two connector calls around a durable timer: the shape the crash cases need."""
    return {
        "format": "flow/v1",
        "id": flow_id,
        "values": {
            "amount": {"type": "number", "access": "input", "default": 1},
            "note": {"type": "string", "access": "input", "default": ""},
            "ticket": {"type": "string", "access": "output"},
            "receipt": {"type": "string", "access": "output"},
            "count": {"type": "number", "access": "output", "default": 0},
        },
        "connectors": {"erp": {"type": "http", "base_url": sink_url, "timeout": 30}},
        "start": "prepare",
        "elements": {
            "prepare": {
                "type": "operator",
                "operations": [{"add": "count", "by": 1}],
                "next": "charge",
            },
            "charge": {
                "type": "message",
                "connector": "erp",
                "action": "POST /charge",
                "body": {"amount": {"ref": "amount"}},
                "outputs": {"ticket": "body.id"},
                "retry": {"attempts": 5, "backoff": 0.2},
                "next": "pause",
            },
            "pause": {"type": "wait", "seconds": pause, "next": "notify"},
            "notify": {
                "type": "message",
                "connector": "erp",
                "action": "POST /notify",
                "body": {"ticket": {"ref": "ticket"}},
                "outputs": {"receipt": "body.id"},
                "retry": {"attempts": 5, "backoff": 0.2},
                "next": "done",
            },
            "done": {"type": "end"},
        },
    }


CHARGE_EFFECTS = 2  # connector visits of one run of ``charge_flow``


def timer_flow(seconds: float, *, flow_id: str = "nap") -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": flow_id,
        "values": {"n": {"type": "number", "access": "output", "default": 0}},
        "start": "nap",
        "elements": {
            "nap": {"type": "wait", "seconds": seconds, "next": "count"},
            "count": {"type": "operator", "operations": [{"add": "n", "by": 1}], "next": "done"},
            "done": {"type": "end"},
        },
    }
