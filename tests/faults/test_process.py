"""The process under pressure: cases 19 (SIGTERM), 20 (memory cap), 21 (CPU
starvation) and 24 (the systemd watchdog), with real daemons."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.net import LocalServer, serve_app

from .checker import check
from .conftest import LONG, Record, scale
from .harness import (
    CHARGE_EFFECTS,
    ControlPlaneThread,
    Daemon,
    LoopThread,
    Sink,
    charge_flow,
    timer_flow,
    wait_for,
)
from .test_network import _all_completed


def test_19_sigterm_with_runs_in_flight(
    cp: ControlPlaneThread, sink: Sink, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 19. SIGTERM (systemd stop, pod termination) with runs in flight: one
    stuck in a connector call that never answers, others waiting on timers.

    Pass: exit 0 within 25 s (with --long the default 20 s drain; CI a 3 s
    one), the database checkpointed (no WAL left behind) and intact; after a
    restart the stuck run resumes with the same Idempotency-Key and every
    run completes once (checker).
    """
    drain = 20.0 if LONG else 3.0
    cp.publish(charge_flow(sink.url, pause=0.01))
    cp.publish(timer_flow(1.0))
    daemon = daemons(env={"FLOW_AGENT_DRAIN_TIMEOUT": str(drain)})
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
    wait_for(daemon.connected, "connect", timeout=60)
    agent_id = daemon.agent_id()
    wait_for(lambda: len(daemon.status()["flows"]) == 2, "flows synced")
    sink.stall = True
    stuck = cp.dispatch("charge")
    naps = [cp.dispatch("nap") for _ in range(5)]
    runs = [r for r in [stuck, *naps] if r is not None]
    assert len(runs) == 6
    wait_for(lambda: len(sink.requests) == 1, "the call that never answers")
    started = time.monotonic()
    code = daemon.terminate(timeout=40)
    took = time.monotonic() - started
    assert code == 0 and took < 25.0, (code, took)
    wal = daemon.state_dir / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the WAL was not checkpointed"
    assert daemon.read("PRAGMA integrity_check") == [("ok",)]
    sink.release()
    daemon.start()
    wait_for(
        lambda: _all_completed(cp, runs) and daemon.status()["outbox"]["depth"] == 0,
        "every run after the restart",
        timeout=60,
    )
    assert daemon.terminate() == 0
    effects = {stuck: CHARGE_EFFECTS}
    verdict = check(
        cp=cp,
        agent_id=agent_id,
        state_dir=daemon.state_dir,
        dispatched=runs,
        sink=sink,
        effects_per_run=lambda r: effects.get(r, 0),
    )
    assert stuck is not None and len(sink.keys_of(stuck)) == CHARGE_EFFECTS
    record(19, drain_timeout_s=drain, exit_code=code, exit_s=round(took, 1), **verdict.figures())


CGROUP = Path("/sys/fs/cgroup/memory")


def _cgroup_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "a memory cgroup needs root"
    if not (CGROUP / "memory.limit_in_bytes").exists():
        return "no cgroup-v1 memory controller at /sys/fs/cgroup/memory"
    return None


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    group = CGROUP / f"flow-agent-faults-{os.getpid()}"
    group.mkdir(exist_ok=True)
    (group / "memory.limit_in_bytes").write_text(str(192 * 2**20))
    try:
        yield group
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:  # its last process is still leaving
                time.sleep(0.1)


async def _huge(request: web.Request) -> web.StreamResponse:
    """A response far larger than the agent may read, declared or streamed."""
    declared = request.query.get("declared") == "1"
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    if declared:
        response.content_length = 512 * 2**20
    await response.prepare(request)
    chunk = b" " * 2**20
    try:
        for _ in range(512):
            await response.write(chunk)
    except (ConnectionError, RuntimeError):
        pass  # the agent hung up, as it should
    return response


@pytest.mark.skipif(_cgroup_unavailable() is not None, reason=str(_cgroup_unavailable()))
def test_20_memory_cap_and_oversized_payloads(
    cp: ControlPlaneThread,
    harness: LoopThread,
    daemons: Callable[..., Daemon],
    memory_cgroup: Path,
    record: Record,
) -> None:
    """Case 20. The daemon in a 192 MiB cgroup-v1 memory limit meets payloads of 512 MiB:
    a connector response declared that large, one streamed without a length,
    a local API request declaring a 1 GiB body, and a 16 MiB websocket frame.

    Pass: each is refused before it is allocated (the runs fault with the
    size limit named, the API answers 413 after reading at most its 1 MiB
    limit, the link refuses the frame and reconnects), the cgroup never hit
    its limit (no OOM kill), and there is no restart loop: the same process
    runs throughout, reconnecting once.
    """

    async def serve() -> LocalServer:
        app = web.Application()
        app.router.add_get("/huge", _huge)
        return await serve_app(app, access_log=None)

    server = harness.call(serve())
    base = server.url
    try:
        for name, query in (("declared", "?declared=1"), ("streamed", "")):
            flow = {
                "format": "flow/v1",
                "id": name,
                "values": {"body": {"type": "object", "access": "output"}},
                "connectors": {"big": {"type": "http", "base_url": base}},
                "start": "get",
                "elements": {
                    "get": {
                        "type": "message",
                        "connector": "big",
                        "action": f"GET /huge{query}",
                        "outputs": {"body": "body"},
                        "next": "done",
                    },
                    "done": {"type": "end"},
                },
            }
            cp.publish(flow)
        enter = f'echo $$ > {memory_cgroup / "cgroup.procs"} && exec "$@"'
        daemon = daemons(prefix=["sh", "-c", enter, "sh"])
        daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
        wait_for(daemon.connected, "connect", timeout=60)
        pid, agent_id = daemon.pid, daemon.agent_id()
        wait_for(lambda: len(daemon.status()["flows"]) == 2, "flows synced")
        runs = {name: cp.dispatch(name) for name in ("declared", "streamed")}
        for name, run_id in runs.items():
            wait_for(
                lambda r=run_id: (
                    cp.read("SELECT status FROM runs WHERE id = ?", (r,))[0][0] == "failed"
                ),
                f"the {name} run to fault",
            )
        api = daemon.read("SELECT value FROM meta WHERE key = 'api.url'")[0][0]
        host, port = api.split("//", 1)[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            head = (
                f"POST /api/v1/flows/declared/runs HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{"
            )
            conn.sendall(head.encode())
            try:  # the API reads at most its 1 MiB limit of it, then answers
                for _ in range(64):
                    conn.sendall(b" " * 65536)
            except OSError:
                pass
            answer = conn.recv(200).decode(errors="replace")
        assert " 413 " in answer.split("\r\n", 1)[0], answer

        async def blast(plane: object) -> None:
            conn = plane.hub.connection(agent_id)  # type: ignore[attr-defined]
            assert conn is not None
            with contextlib.suppress(Exception):
                await conn.ws.send_str('{"v":1,"type":"status","pad":"' + "z" * (16 * 2**20) + '"}')

        cp.do(blast)  # type: ignore[arg-type]
        wait_for(lambda: cp.online(agent_id) and daemon.connected(), "the link back", timeout=60)
        time.sleep(2.0)
        failcnt = int((memory_cgroup / "memory.failcnt").read_text())
        peak = int((memory_cgroup / "memory.max_usage_in_bytes").read_text())
        oom = (memory_cgroup / "memory.oom_control").read_text()
        assert daemon.alive() and daemon.pid == pid, "the daemon was restarted"
        assert failcnt == 0 and "under_oom 0" in oom, (failcnt, oom)
        sessions = daemon.log_text().count("flow_agent.link: connected to")
        assert sessions <= 2, f"{sessions} sessions: a reconnect loop"
        messages = [
            cp.read("SELECT result FROM runs WHERE id = ?", (r,))[0][0] for r in runs.values()
        ]
        assert all("limit" in m for m in messages), messages
        assert daemon.terminate() == 0
    finally:
        harness.call(server.close())
    record(
        20,
        limit_mib=192,
        peak_mib=round(peak / 2**20, 1),
        oom_kills=0,
        sessions=sessions,
        api_answer=answer.split("\r\n", 1)[0],
    )


@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng starves the CPUs")
def test_21_cpu_starvation(
    tmp_path: Path,
    cp: ControlPlaneThread,
    sink: Sink,
    daemons: Callable[..., Daemon],
    record: Record,
) -> None:
    """Case 21. stress-ng --cpu 2 on this 2-core machine while the agent works
    (CI: 8 s with a 1 s heartbeat; --long: 120 s with the default 20 s).

    Pass: heartbeats keep up: no false disconnect (one session, online at
    the control plane throughout), and runs dispatched meanwhile complete.
    """
    seconds = scale(8.0, 120.0)
    heartbeat = 20.0 if LONG else 1.0
    plane = ControlPlaneThread(tmp_path / "cp-hb", loop=cp.loop, heartbeat=heartbeat).start()
    try:
        plane.tenant("acme")
        plane.publish(charge_flow(sink.url, pause=0.01))
        env = {} if LONG else {"FLOW_AGENT_HEARTBEAT": str(heartbeat)}
        daemon = daemons(env=env)
        daemon.start(FLOW_AGENT_PAIRING_TOKEN=plane.token())
        wait_for(daemon.connected, "connect", timeout=60)
        agent_id = daemon.agent_id()
        wait_for(lambda: bool(daemon.status()["flows"]), "the flow to sync")
        stress = subprocess.Popen(
            ["stress-ng", "--cpu", "2", "--timeout", f"{int(seconds)}s", "--quiet"]
        )
        runs: list[str] = []
        offline = 0
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                offline += not plane.online(agent_id)
                run_id = plane.dispatch("charge")
                if run_id is not None:
                    runs.append(run_id)
                time.sleep(0.5)
        finally:
            stress.wait(seconds + 30)
        wait_for(lambda: _all_completed(plane, runs), "runs under starvation", timeout=90)
        sessions = daemon.log_text().count("flow_agent.link: connected to")
        assert sessions == 1 and offline == 0, (sessions, offline)
        assert daemon.terminate() == 0
    finally:
        plane.stop()
    record(21, stress_s=seconds, heartbeat_s=heartbeat, sessions=sessions, runs=len(runs))


class NotifyListener:
    """A fake NOTIFY_SOCKET: records every datagram with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.got.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace blocks the event loop")
def test_24_systemd_watchdog(
    tmp_path: Path, cp: ControlPlaneThread, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 24. A fake NOTIFY_SOCKET, WATCHDOG_USEC of 1 s, and the event loop blocked
    for 3 s (strace delays one of its epoll_wait calls).

    Pass: READY=1 comes, then WATCHDOG=1 every half interval (no gap over
    0.75 s while the loop runs); while the loop is blocked no WATCHDOG=1
    arrives at all (a gap of 2.5 s or more), and they resume after.
    """
    listener = NotifyListener(tmp_path / "notify.sock")
    block_at = 300  # epoll_waits before the block: well after READY=1 (about 25 a second)
    block = f"inject=epoll_wait,epoll_pwait:delay_enter=3000000:when={block_at}"
    strace = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=epoll_wait,epoll_pwait",
        "-e",
        block,
    ]
    daemon = daemons(prefix=strace)
    try:
        daemon.start(
            FLOW_AGENT_PAIRING_TOKEN=cp.token(),
            NOTIFY_SOCKET=str(listener.path),
            WATCHDOG_USEC="1000000",
        )
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            listener.drain()
            beats = [t for t, m in listener.got if "WATCHDOG=1" in m]
            gaps = [b - a for a, b in itertools.pairwise(beats)]
            if any(g >= 2.5 for g in gaps) and len(beats) > gaps.index(max(gaps)) + 4:
                break
        # SIGTERM to the agent itself, not to strace (which would only let go of it).
        (child,) = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
        os.kill(int(child), signal.SIGTERM)
        assert daemon.proc is not None and daemon.proc.wait(30) == 0
        listener.drain()
    finally:
        listener.close()
    messages = [m for _, m in listener.got]
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
    beats = [t for t, m in listener.got if "WATCHDOG=1" in m]
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    blocked = max(gaps)
    normal = sorted(gaps)[:-1]
    assert ready is not None and blocked >= 2.5, gaps
    assert max(normal) <= 0.75, normal
    record(
        24,
        watchdog_usec=1_000_000,
        beats=len(beats),
        max_gap_running_s=round(max(normal), 2),
        gap_while_blocked_s=round(blocked, 2),
    )
