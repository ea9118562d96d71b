"""The daemon's lifecycle with real processes, real signals and a real NOTIFY_SOCKET.

``flow-controlplane serve`` and ``flow-agent run`` are real processes; the
test plays systemd with a bound ``AF_UNIX``/``SOCK_DGRAM`` socket and sends
real SIGTERM/SIGHUP.  Waits are bounded only to catch hangs; the bounds
asserted about a stop are generous next to the grace period they contrast.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import serve_app

from .helpers import ROOT, CpProcess, cp_process, free_port, wait_for
from .test_serve import http

HELLO: dict[str, Any] = {
    "format": "flow/v1",
    "id": "hello",
    "values": {"greeting": {"type": "string", "access": "output", "default": "hi"}},
    "start": "done",
    "elements": {"done": {"type": "end"}},
}


class Systemd:
    """The service manager's end of NOTIFY_SOCKET: a bound datagram socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.seen: list[tuple[float, str]] = []

    def poll(self) -> None:
        while True:
            try:
                self.seen.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                return

    def messages(self) -> list[str]:
        self.poll()
        return [text for _, text in self.seen]

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 30) -> float:
        """Wait for a datagram that satisfies ``predicate``; returns when it arrived."""
        deadline = time.monotonic() + timeout
        checked = 0
        while time.monotonic() < deadline:
            self.poll()
            for when, text in self.seen[checked:]:
                if predicate(text):
                    return when
            checked = len(self.seen)
        raise AssertionError(f"no {what} from the agent; it sent {self.messages()}")

    def close(self) -> None:
        self.sock.close()


def _ready(text: str) -> bool:
    return "READY=1" in text.splitlines()


class Daemon:
    """One ``flow-agent run`` process; its JSON log lines are collected as they come."""

    def __init__(self, state: Path, systemd: Systemd | None, **env: str) -> None:
        self.state = state
        self.api_port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW_AGENT_", "NOTIFY"))}
        full.update(
            PYTHONPATH=str(ROOT),
            FLOW_AGENT_TIMER_INTERVAL="0.1",
            FLOW_AGENT_LOG_FORMAT="json",
            FLOW_AGENT_API_LISTEN=f"127.0.0.1:{self.api_port}",
        )
        if systemd is not None:
            full.update(NOTIFY_SOCKET=systemd.address, WATCHDOG_USEC="400000")
        full.update(env)
        self.env = full
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=full,
        )
        self.lines: list[str] = []
        self._errors: list[str] = []
        # Both pipes drained as they fill, so the agent never blocks on a full pipe.
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe: Any, into: list[str]) -> None:
        for line in pipe:
            into.append(line.rstrip("\n"))

    @property
    def err(self) -> str:
        return "\n".join(self._errors)

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def logged(self, words: str) -> bool:
        return any(words in doc["message"] for doc in self.logs())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.api_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", *args, "--state-dir", str(self.state)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.env,
            timeout=60,
        )


class Sink:
    """A real HTTP server on loopback whose calls wait for ``release()``.

    Records every Idempotency-Key; runs in a thread of its own so it outlives
    the agent processes a test stops and starts.
    """

    def __init__(self) -> None:
        import asyncio

        from aiohttp import web

        self.keys: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._gate = threading.Event()
        self._ready = threading.Event()
        self._web = web

        async def call(request: web.Request) -> web.Response:
            self.keys.append(request.headers.get("Idempotency-Key", ""))
            while not self._gate.is_set():
                await asyncio.sleep(0.02)
            return web.json_response({"ok": True})

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/call", call)
            self._server = await serve_app(app, shutdown_timeout=0.1)
            self.port = self._server.port
            self._ready.set()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def close(self) -> None:
        import asyncio

        self.release()
        asyncio.run_coroutine_threadsafe(self._server.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def flow(self) -> dict[str, Any]:
        return {
            "format": "flow/v1",
            "id": "charge",
            "connectors": {"erp": {"type": "http", "base_url": f"http://127.0.0.1:{self.port}"}},
            "start": "call",
            "elements": {
                "call": {
                    "type": "message",
                    "connector": "erp",
                    "action": "POST /call",
                    "timeout": 120,
                    "next": "done",
                },
                "done": {"type": "end"},
            },
        }


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[CpProcess]:
    with cp_process(tmp_path / "cp") as server:
        yield server


@pytest.fixture
def systemd() -> Iterator[Systemd]:
    # An abstract name: a real daemon must handle the '@' form, and no path length limit bites.
    sock = Systemd(f"@flow-agent-test-{uuid.uuid4().hex}")
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    try:
        yield server
    finally:
        server.close()


def _runs(state: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5) as conn:
        return dict(conn.execute("SELECT run_id, status FROM runs"))


def _integrity(state: Path) -> str:
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _dispatch(cp: CpProcess, flow: str, count: int) -> list[str]:
    return [
        cp.admin.call("POST", "/admin/v1/tenants/acme/runs", {"flow": flow})["run_id"]
        for _ in range(count)
    ]


def _status_of(cp: CpProcess, run_id: str) -> str:
    return str(cp.admin.call("GET", f"/admin/v1/tenants/acme/runs/{run_id}")["status"])


# -- readiness, watchdog, STATUS=, STOPPING=, health ------------------------------------


def test_ready_comes_after_the_api_and_the_first_sync_then_watchdog_and_stopping(
    tmp_path: Path, cp: CpProcess, systemd: Systemd
) -> None:
    cp.admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": HELLO})
    token = cp.token()
    state = tmp_path / "agent"
    daemon = Daemon(state, systemd, FLOW_AGENT_PAIRING_TOKEN=token)
    try:
        systemd.wait(_ready, "READY=1")
        # Ready means ready: the published flow is already here, the API answers.
        shown = daemon.cli("status", "--json")
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert [f["id"] for f in status["flows"]] == ["hello"]
        assert status["lifecycle"]["state"] == "ready"
        assert daemon.get("/readyz") == (200, {"status": "ready"})
        health = daemon.cli("health")
        assert health.returncode == 0 and health.stdout.startswith("healthy"), health
        ready_text = next(m for m in systemd.messages() if _ready(m))
        assert "STATUS=connected to " in ready_text and "1 flow(s)" in ready_text
        # Before READY, a STATUS= line said what it waited for.
        assert any(m.startswith("STATUS=starting: waiting for") for m in systemd.messages())
        # WATCHDOG_USEC=400000: a ping every 0.2 s while the loops progress.
        first = systemd.wait(lambda m: m == "WATCHDOG=1", "a first WATCHDOG=1")
        systemd.wait(lambda m: m == "WATCHDOG=1" and systemd.seen[-1][0] > first, "another one")
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{daemon.api_port}/metrics", timeout=5)
        metrics = scrape.read().decode()
        assert 'flow_agent_link_state{state="connected"} 1.0' in metrics
        assert 'flow_agent_lifecycle_state{state="ready"} 1.0' in metrics
        assert 'flow_agent_flow_syncs_total{result="applied"} 1.0' in metrics
    finally:
        code = daemon.stop()
    assert code == 0, daemon.err
    assert any(m.startswith("STOPPING=1") for m in systemd.messages())
    assert daemon.cli("health").returncode == 1
    # Logs: one JSON object per line on stdout; nothing on stderr; no token anywhere.
    docs = daemon.logs()
    assert docs and all({"ts", "level", "logger", "message"} <= set(d) for d in docs)
    assert daemon.err == ""
    secret = token.split(".")[-1]
    assert secret not in "\n".join(daemon.lines)


def test_offline_with_synced_flows_is_ready_without_flows_it_waits(
    tmp_path: Path, cp: CpProcess, systemd: Systemd
) -> None:
    state = tmp_path / "agent"
    first = Daemon(state, None, FLOW_AGENT_PAIRING_TOKEN=cp.token())
    try:
        wait_for(lambda: first.logged("ready:"), what="the first start")
    finally:
        assert first.stop() == 0
    cp.kill()
    # Paired, control plane down, no flow yet: not ready, and /readyz says why.
    waiting = Daemon(state, systemd)
    try:
        wait_for(lambda: waiting.logged("cannot reach the control plane"), what="a failed connect")
        wait_for(lambda: waiting.get("/readyz")[0] == 503, what="the API")
        code, body = waiting.get("/readyz")
        assert code == 503
        assert "the first flow sync" in body["reason"]
        assert not any(_ready(m) for m in systemd.messages())
        cp.start()  # the control plane comes back: the first sync makes it ready
        cp.admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": HELLO})
        systemd.wait(_ready, "READY=1 once the control plane answers", timeout=60)
    finally:
        assert waiting.stop() == 0, waiting.err
    cp.kill()
    systemd.seen.clear()
    offline = Daemon(state, systemd)
    try:
        systemd.wait(_ready, "READY=1 while offline")
        text = next(m for m in systemd.messages() if _ready(m))
        assert "STATUS=offline" in text, text
        assert offline.logged("ready: offline")
    finally:
        assert offline.stop() == 0, offline.err


# -- SIGTERM: drain, grace, persistence, the second signal --------------------------------


def test_sigterm_drains_runs_in_flight_within_the_grace_period(
    tmp_path: Path, cp: CpProcess, sink: Sink
) -> None:
    cp.admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": sink.flow()})
    state = tmp_path / "agent"
    daemon = Daemon(state, None, FLOW_AGENT_PAIRING_TOKEN=cp.token(), FLOW_AGENT_DRAIN_TIMEOUT="30")
    try:
        wait_for(lambda: daemon.logged("ready:"), what="ready")
        runs = _dispatch(cp, "charge", 5)
        wait_for(lambda: len(sink.keys) == 5, what="five calls in flight")
        daemon.signal(signal.SIGTERM)
        wait_for(lambda: daemon.logged("stopping: no new runs"), what="the drain to begin")
        # The API stays up while runs drain: not ready, new runs refused, by name.
        api = f"http://127.0.0.1:{daemon.api_port}"
        assert http("GET", f"{api}/readyz")[0] == 503
        status, problem = http("POST", f"{api}/api/v1/flows/charge/runs", {"inputs": {}})
        assert status == 503 and problem["type"].endswith(":draining"), problem
        sink.release()  # the calls answer: the runs finish inside the grace period
        assert daemon.wait() == 0, daemon.err
    finally:
        daemon.kill()
    assert daemon.logged("drained: no run was left in flight")
    assert {_runs(state)[r] for r in runs} == {"completed"}
    again = Daemon(state, None)
    try:
        wait_for(lambda: again.logged("ready:"), what="the restart")
        wait_for(
            lambda: all(_status_of(cp, r) == "completed" for r in runs),
            what="the control plane to hear every completion",
        )
    finally:
        assert again.stop() == 0


def test_past_the_grace_runs_are_persisted_and_resume_and_a_second_signal_is_immediate(
    tmp_path: Path, cp: CpProcess, sink: Sink, systemd: Systemd
) -> None:
    cp.admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": sink.flow()})
    state = tmp_path / "agent"
    daemon = Daemon(
        state, systemd, FLOW_AGENT_PAIRING_TOKEN=cp.token(), FLOW_AGENT_DRAIN_TIMEOUT="1"
    )
    try:
        systemd.wait(_ready, "READY=1")
        stalled = _dispatch(cp, "charge", 3)
        wait_for(lambda: len(sink.keys) == 3, what="three calls in flight")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.err  # after the 1 s grace, not after the calls
    finally:
        daemon.kill()
    assert {_runs(state)[r] for r in stalled} == {"running"}  # persisted mid-call
    assert daemon.logged("3 run(s) were still busy")
    stopping = next(m for m in systemd.messages() if m.startswith("STOPPING=1"))
    assert "draining: 3 run(s) in flight" in stopping
    assert "EXTEND_TIMEOUT_USEC=11000000" in systemd.messages()

    # A long grace this time, and an impatient admin: the second SIGTERM ends it now.
    patient = Daemon(state, None, FLOW_AGENT_DRAIN_TIMEOUT="600")
    try:
        wait_for(lambda: len(sink.keys) == 6, what="the three runs to call again")
        patient.signal(signal.SIGTERM)
        wait_for(lambda: patient.logged("stopping: no new runs"), what="the drain")
        asked = time.monotonic()
        patient.signal(signal.SIGTERM)
        assert patient.wait() == 0, patient.err
        assert time.monotonic() - asked < 10  # the grace was 600 s
    finally:
        patient.kill()
    assert patient.logged("second stop request")
    assert _integrity(state) == "ok"
    assert {_runs(state)[r] for r in stalled} == {"running"}

    sink.release()
    last = Daemon(state, None)
    try:
        wait_for(
            lambda: all(_status_of(cp, r) == "completed" for r in stalled),
            what="the resumed runs to complete",
        )
        agent_id = json.loads(last.cli("status", "--json").stdout)["identity"]["agent_id"]
    finally:
        assert last.stop() == 0
    # Resumed, not restarted: every call of a run carried its one idempotency key.
    assert len(set(sink.keys)) == 3
    events = cp.events(agent_id)
    for run_id in stalled:
        kinds = [e["kind"] for e in events if e["run_id"] == run_id]
        assert kinds.count("run.started") == 1 and kinds.count("run.completed") == 1


# -- SIGHUP -----------------------------------------------------------------------------


def test_sighup_reloads_what_can_change_live_and_keeps_a_broken_file_out(
    tmp_path: Path, cp: CpProcess, systemd: Systemd
) -> None:
    cp.admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": HELLO})
    config = tmp_path / "agent.toml"
    config.write_text('report_outputs = false\nlog_level = "info"\n')
    state = tmp_path / "agent"
    daemon = Daemon(
        state, systemd, FLOW_AGENT_PAIRING_TOKEN=cp.token(), FLOW_AGENT_CONFIG=str(config)
    )
    try:
        systemd.wait(_ready, "READY=1")
        run = cp.admin.call("POST", "/admin/v1/tenants/acme/runs", {"flow": "hello", "wait": 20})
        assert run["status"] == "completed" and "outputs" not in run["result"]
        config.write_text('report_outputs = true\nlog_level = "debug"\nsync = "full"\n')
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.logged("configuration reloaded"), what="the reload")
        assert daemon.logged("applied: report_outputs, log_level")
        assert daemon.logged("applied only on restart: sync")
        assert any(
            d["level"] == "debug" and "settings now in effect" in d["message"]
            for d in daemon.logs()
        )  # the new level, live
        systemd.wait(lambda m: m.startswith("RELOADING=1\nMONOTONIC_USEC="), "RELOADING=1")
        run = cp.admin.call("POST", "/admin/v1/tenants/acme/runs", {"flow": "hello", "wait": 20})
        assert run["result"]["outputs"] == {"greeting": "hi"}  # report_outputs, live
        config.write_text("report_outputs = maybe\n")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.logged("configuration not reloaded"), what="the refusal")
        run = cp.admin.call("POST", "/admin/v1/tenants/acme/runs", {"flow": "hello", "wait": 20})
        assert run["result"]["outputs"] == {"greeting": "hi"}  # the running configuration stayed
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0, daemon.err


# -- exit codes ---------------------------------------------------------------------------


def test_configuration_and_identity_errors_exit_78(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW_AGENT_", "NOTIFY"))}
    env["PYTHONPATH"] = str(ROOT)
    bad_toml = tmp_path / "unknown.toml"
    bad_toml.write_text("drain_timout = 5\n")
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    cases: dict[str, tuple[list[str], dict[str, str], str]] = {
        "not paired": ([], {}, "not paired"),
        "unknown setting": (["--config", str(bad_toml)], {}, "drain_timout"),
        "unreadable CA file": (["--ca-file", str(bad_ca)], {}, "CA file"),
        "garbled token": ([], {"FLOW_AGENT_PAIRING_TOKEN": "fp1.garbage"}, "garbled"),
    }
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "run",
                "--state-dir",
                tempfile.mkdtemp(dir=tmp_path),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**env, **extra},
        )
        for name, (args, extra, _) in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 78, (name, out, err)
        assert cases[name][2] in err, (name, err)
        assert "Traceback" not in err + out, name
