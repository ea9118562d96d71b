"""The pieces ``bench/link.py`` drives: real processes, the admin API, in-process agents.

The control plane is always a real ``flow-controlplane serve`` process (its own
interpreter, so on two cores it does not share a CPU with the agents, as in a
deployment); agents are either ``Agent`` objects on the bench's event loop
(each its own state directory, key pair, pairing and websocket) or one real
``flow-agent run`` process for its memory figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from bench_report import Row

from agent.daemon import Agent
from agent.identity import load_identity, load_private_key
from agent.link.pairing import pair
from agent.settings import Settings
from agent.store.sqlite import SqliteStore

ROOT: Final = Path(__file__).resolve().parents[1]
STEP: Final = 60.0  # guards against a hang; never part of a figure


class BenchError(Exception):
    """Something the bench measures did not do what it should: its figure would mean nothing."""


@dataclass
class Report:
    """The table's rows, in the order the benchmarks ran."""

    rows: list[Row] = field(default_factory=list)

    def add(self, *args: str) -> None:
        self.rows.append(Row(*args))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def verdict(value: float, limit: float) -> str:
    return "met" if value < limit else "MISSED"


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` % at or below it."""
    ordered = sorted(values)
    if not ordered:
        raise BenchError("no samples")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes, from /proc/PID/status."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read the memory of process {pid}: {exc}") from exc
    if len(found) != 2:
        raise BenchError(f"/proc/{pid}/status has no VmRSS/VmHWM")
    return found["VmRSS"], found["VmHWM"]


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # The command name may hold spaces; the fields after it are plain.
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError) as exc:
        raise BenchError(f"cannot read the CPU time of process {pid}: {exc}") from exc
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commit_latency(directory: Path, *, commits: int) -> list[float]:
    """Seconds per SQLite commit with ``synchronous=FULL`` (an fsync each), as the cp commits.

    The control plane makes every run and every handshake durable this way, so
    the disk's fsync time shows in every figure here; on a shared machine it
    moves by an order of magnitude with the others' I/O.
    """
    path = directory / "fsync-probe.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE probe (n INTEGER)")
        took = []
        for n in range(commits):
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO probe VALUES (?)", (n,))
            conn.execute("COMMIT")
            took.append(time.perf_counter() - start)
        return took
    finally:
        conn.close()
        for leftover in directory.glob("fsync-probe.db*"):
            leftover.unlink()


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a spawned agent or control plane: none of the caller's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW_AGENT_", "FLOW_CP_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


async def within(waiter: Awaitable[Any], what: str, *, timeout: float = STEP) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await waiter
    except TimeoutError:
        raise BenchError(f"timed out waiting for {what}") from None


async def until(check: Callable[[], bool], what: str, *, every: float = 0.005) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(every)

    await within(poll(), what)


# -- the control plane --------------------------------------------------------------


class CpProcess:
    """``flow-controlplane serve`` on a fixed port, so a restart keeps the agents' URL."""

    def __init__(self, data: Path, *, log: Path) -> None:
        self.data = data
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the control plane is not running")
        return self.proc.pid

    async def start(self) -> float:
        """Spawn it; returns the ``perf_counter`` time at which it said it listens."""
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controlplane.cli", "serve", "--data", str(self.data),
                "--port", str(self.port), "--region", "bench",
                stdout=asyncio.subprocess.PIPE, stderr=log, cwd=ROOT, env=child_env(),
            )  # fmt: skip
        assert self.proc.stdout is not None
        # It prints this one line once it listens, and nothing else on stdout.
        line = await within(self.proc.stdout.readline(), "the control plane to listen")
        listening = time.perf_counter()
        if b"listening on" not in line:
            raise BenchError(f"the control plane did not start; see {self.log.name}: {line!r}")
        return listening

    async def stop(self) -> None:
        """SIGTERM, as systemd stops it: agent links are closed with 1012."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        await within(self.proc.wait(), "the control plane to stop")
        self.proc = None

    def admin_key(self) -> str:
        return (self.data / "admin.key").read_text(encoding="utf-8").strip()


class Admin:
    """The control plane's admin API over HTTP, as the CLI and an operator's scripts use it."""

    def __init__(self, url: str, admin_key: str) -> None:
        self.url = url
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=aiohttp.ClientTimeout(total=STEP),
        )

    async def close(self) -> None:
        await self._session.close()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self._session.request(method, self.url + path, json=body) as response:
            answer = await response.json()
            if response.status >= 300:
                raise BenchError(f"{method} {path}: {response.status} {answer}")
            return answer

    async def token(self, tenant: str) -> str:
        answer = await self.call("POST", f"/admin/v1/tenants/{tenant}/tokens", {"ttl": 3600})
        return str(answer["token"])

    async def agent(self, tenant: str, agent_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self.call(
            "GET", f"/admin/v1/tenants/{tenant}/agents/{agent_id}"
        )
        return answer

    async def agents(self, tenant: str) -> list[dict[str, Any]]:
        answer = await self.call("GET", f"/admin/v1/tenants/{tenant}/agents")
        return list(answer["agents"])


# -- agents -------------------------------------------------------------------------


@dataclass
class SyncWatch:
    """When each version of one flow became active on an agent (its sync hook, not a poll)."""

    flow_id: str
    applied: dict[int, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, agent: Agent) -> None:
        inner = agent.sync.on_frame
        store = agent.store

        def on_frame(ok: bool) -> None:
            # Called right after the frame's transaction committed.
            at = time.perf_counter()
            inner(ok)
            active = store.active_flow(self.flow_id)
            if ok and active is not None and active.version not in self.applied:
                self.applied[active.version] = at
                self.changed.set()

        agent.sync.on_frame = on_frame

    async def wait_for(self, version: int) -> float:
        while version not in self.applied:
            self.changed.clear()
            await within(self.changed.wait(), f"version {version} of {self.flow_id} to be active")
        return self.applied[version]


@dataclass
class AppendWatch:
    """When the agent's outbox took events (its append hook, which also wakes the link)."""

    times: list[float] = field(default_factory=list)

    def attach(self, agent: Agent) -> None:
        inner = agent.outbox.on_append

        def on_append() -> None:
            self.times.append(time.perf_counter())
            if inner is not None:
                inner()

        agent.outbox.on_append = on_append

    def between(self, start: float, end: float) -> list[float]:
        return [t for t in self.times if start <= t <= end]


class LocalAgent:
    """One agent on this event loop: its own state directory, key, pairing and link."""

    def __init__(self, state_dir: Path) -> None:
        self.settings = Settings(state_dir=state_dir)
        self.store: SqliteStore | None = None
        self.agent: Agent | None = None
        self._task: asyncio.Task[None] | None = None

    async def pair(self, token: str) -> None:
        self.store = SqliteStore.open(self.settings.state_dir, synchronous=self.settings.sync)
        # Plain ws:// is accepted on loopback without allow_plaintext.
        await pair(token, state_dir=self.settings.state_dir, store=self.store)

    def build(self) -> Agent:
        identity = load_identity(self.settings.state_dir)
        if self.store is None or identity is None:
            raise BenchError("the agent is not paired")
        self.agent = Agent(
            self.settings,
            store=self.store,
            identity=identity,
            key=load_private_key(self.settings.state_dir),
        )
        return self.agent

    @property
    def a(self) -> Agent:
        if self.agent is None:
            raise BenchError("the agent is not built")
        return self.agent

    def start(self, group: asyncio.TaskGroup) -> None:
        self._task = group.create_task(self.a.serve(), name=f"agent {self.a.identity.agent_id}")

    async def stop(self) -> None:
        if self.agent is not None and self._task is not None:
            self.agent.request_stop()
            await within(self._task, "an agent to stop")
            self._task = None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


async def pair_all(
    agents: list[LocalAgent], admin: Admin, tenant: str, *, concurrency: int = 8
) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(agent: LocalAgent) -> None:
        async with gate:
            await agent.pair(await admin.token(tenant))
            agent.build()

    async with asyncio.TaskGroup() as group:
        for agent in agents:
            group.create_task(one(agent))


class AgentProcess:
    """One ``flow-agent run`` process, paired with ``flow-agent pair``, for its RSS."""

    def __init__(self, state_dir: Path, *, log: Path) -> None:
        self.state_dir = state_dir
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agent.cli", *args, "--state-dir", str(self.state_dir)]

    async def pair(self, token: str) -> str:
        with open(self.log, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *self._cmd("pair", token), stdout=log, stderr=log, cwd=ROOT, env=child_env()
            )
        if await within(proc.wait(), "flow-agent pair") != 0:
            raise BenchError(f"flow-agent pair failed; see {self.log.name}")
        identity = load_identity(self.state_dir)
        if identity is None:
            raise BenchError("flow-agent pair stored no identity")
        return identity.agent_id

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self._cmd("run"),
                stdout=log,
                stderr=log,
                cwd=ROOT,
                # A free port for its local API: the default one may be taken here.
                env=child_env(FLOW_AGENT_API_LISTEN="127.0.0.1:0"),
            )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the agent process is not running")
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await within(self.proc.wait(), "flow-agent run to stop")
        self.proc = None
        if code != 0:
            raise BenchError(f"flow-agent run exited {code}; see {self.log.name}")


def kill_quietly(proc: asyncio.subprocess.Process | None) -> None:
    """Last resort on the way out of a failed bench: no process may outlive it."""
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


__all__ = [
    "ROOT",
    "Admin",
    "AgentProcess",
    "AppendWatch",
    "BenchError",
    "CpProcess",
    "LocalAgent",
    "Report",
    "SyncWatch",
    "child_env",
    "commit_latency",
    "kill_quietly",
    "ms",
    "pair_all",
    "percentile",
    "proc_cpu",
    "proc_memory",
    "until",
    "verdict",
    "within",
]
