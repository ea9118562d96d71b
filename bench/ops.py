"""Operations benchmark: start to READY, idle RSS, SIGTERM with 100 runs in flight.

    python bench/ops.py                 # full: 5 starts, 100 runs in flight
    python bench/ops.py --quick         # 2 starts, 10 runs (a test runs this)
    python bench/ops.py --append        # also append the section to bench/RESULTS.md

Everything is a real process on loopback: ``flow-controlplane serve``, a
paired ``flow-agent run`` with a real ``NOTIFY_SOCKET`` (a bound datagram
socket, as systemd has), and an HTTP server the runs' connector calls wait
on.  It prints a Markdown section; it exits 1, with no section, when a
measured stop did not keep every run (a figure for lost runs would mean
nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_report import machine  # noqa: E402

RSS_TARGET_MIB = 60
SETTLE = 0.3  # agent.supervisor.SYNC_SETTLE, which applies on loopback
READY_TARGET_S = 1.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW_AGENT_", "FLOW_CP_"))}
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise SystemExit(f"ops bench: timed out waiting for {what}")


class ControlPlane:
    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane.cli",
                "serve",
                "--data",
                str(data),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=clean_env(),
        )
        assert self.proc.stdout is not None
        assert "listening on" in self.proc.stdout.readline()
        self.key = (data / "admin.key").read_text().strip()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read() or b"null")

    def completed(self) -> set[str]:
        runs = self.call("GET", "/admin/v1/tenants/acme/runs?limit=10000")["runs"]
        return {r["run_id"] for r in runs if r["status"] == "completed"}

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class Sink:
    """Connector calls land here and are answered after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        from aiohttp import web

        self.delay = delay
        self.calls = 0
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def call(request: web.Request) -> web.Response:
            self.calls += 1
            await asyncio.sleep(self.delay)
            return web.json_response({"ok": True})

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/call", call)
            self._runner = web.AppRunner(app, shutdown_timeout=0.1)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            ready.set()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)

    def close(self) -> None:
        async def shutdown() -> None:
            await self._runner.cleanup()
            # Calls of runs the agent abandoned are still sleeping: end them too.
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class Notify:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until READY=1 arrives (from now, monotonic)."""
        self.sock.settimeout(timeout)
        while True:
            text = self.sock.recv(4096).decode()
            if "READY=1" in text.splitlines():
                return time.monotonic()

    def close(self) -> None:
        self.sock.close()


def spawn_agent(
    state: Path, notify: Notify | None, *, log: Path | None = None, **env: str
) -> subprocess.Popen[bytes]:
    extra = {"FLOW_AGENT_API_LISTEN": f"127.0.0.1:{free_port()}", "FLOW_AGENT_LOG_FORMAT": "json"}
    if notify is not None:
        extra["NOTIFY_SOCKET"] = notify.path
    extra.update(env)
    with open(log or os.devnull, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(state)],
            stdout=out,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env=clean_env(**extra),
        )


def in_process_seconds(log: Path) -> float | None:
    """The agent's own "ready: ... (N s after start)": the part after its imports."""
    for line in log.read_text(encoding="utf-8").splitlines():
        message = json.loads(line).get("message", "")
        if message.startswith("ready:") and "s after start)" in message:
            return float(message.rsplit("(", 1)[1].split()[0])
    return None


def rss_mib(pid: int) -> tuple[float, float, float]:
    """(RSS, of it anonymous, PSS) in MiB, from /proc."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0])
    pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return fields["VmRSS"] / 1024, fields.get("RssAnon", 0) / 1024, pss / 1024


def flow(i: int, sink_port: int | None = None) -> dict[str, Any]:
    if sink_port is None:
        return {
            "format": "flow/v1",
            "id": f"idle-{i}",
            "values": {"n": {"type": "number", "access": "input", "default": i}},
            "start": "add",
            "elements": {
                "add": {"type": "operator", "operations": [{"add": "n", "by": 1}], "next": "done"},
                "done": {"type": "end"},
            },
        }
    return {
        "format": "flow/v1",
        "id": "charge",
        "connectors": {"erp": {"type": "http", "base_url": f"http://127.0.0.1:{sink_port}"}},
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


def run_rows(state: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5) as conn:
        return dict(conn.execute("SELECT run_id, status FROM runs"))


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    return code, time.monotonic() - asked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 starts, 10 runs in flight")
    parser.add_argument("--append", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    starts, in_flight = (2, 10) if args.quick else (5, 100)
    rows: list[str] = []
    notes: list[str] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="flow-agent-ops-bench-") as tmp:
        root = Path(tmp)
        cp = ControlPlane(root / "cp")
        sink = Sink(delay=3.0)
        try:
            cp.call("POST", "/admin/v1/tenants", {"name": "acme"})
            for i in range(10):
                cp.call("POST", "/admin/v1/tenants/acme/flows", {"definition": flow(i)})
            state = root / "agent"
            token = cp.call("POST", "/admin/v1/tenants/acme/tokens", {})["token"]
            paired = subprocess.run(
                [sys.executable, "-m", "agent.cli", "pair", token, "--state-dir", str(state)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=clean_env(),
            )
            if paired.returncode:
                raise SystemExit(f"ops bench: pairing failed: {paired.stderr}")

            # 1. start -> READY=1 (paired; the first start also syncs the 10 flows).
            notify = Notify(root / "notify")
            times: list[float] = []
            inside: list[float] = []
            rss: tuple[float, float, float] | None = None
            try:
                for n in range(starts):
                    log = root / f"start-{n}.log"
                    began = time.monotonic()
                    proc = spawn_agent(state, notify, log=log)
                    times.append(notify.wait_ready() - began)
                    if n == starts - 1:
                        time.sleep(5)  # idle: connected, 10 flows, nothing running
                        rss = rss_mib(proc.pid)
                    code, _ = stop(proc)
                    if code != 0:
                        raise SystemExit(f"ops bench: the agent exited {code}")
                    seconds = in_process_seconds(log)
                    if seconds is not None:
                        inside.append(seconds)
            finally:
                notify.close()
            import_s = _import_time()
            median = statistics.median(times)
            verdict = "met" if median < READY_TARGET_S else "MISSED"
            rows.append(
                f"| start to READY=1 | {median:.2f} | s | < {READY_TARGET_S}: {verdict} |"
                f" median of {starts} starts ({min(times):.2f}-{max(times):.2f}), process spawn"
                f" to the datagram; paired, 10 flows. Of it, after the imports: median"
                f" {statistics.median(inside or [0.0]):.2f} s (open the store, bind the API,"
                f" connect, sync, then {SETTLE:g} s of quiet from the control plane);"
                f" `python -c 'import agent.daemon'` alone: {import_s:.2f} s (median of 3) |"
            )
            assert rss is not None
            verdict = "met" if rss[0] <= RSS_TARGET_MIB else "MISSED"
            rows.append(
                f"| idle RSS, connected, 10 flows | {rss[0]:.1f} | MiB | <= {RSS_TARGET_MIB}:"
                f" {verdict} | after READY and 5 s idle; anonymous {rss[1]:.1f} MiB, PSS"
                f" {rss[2]:.1f} MiB |"
            )

            # 2. SIGTERM with runs in flight, inside the grace period.
            cp.call("POST", "/admin/v1/tenants/acme/flows", {"definition": flow(0, sink.port)})
            proc = spawn_agent(state, None)
            wait_for(lambda: _ready(state), "the agent to be ready")
            runs = _dispatch(cp, in_flight)
            wait_for(lambda: sink.calls >= in_flight, f"{in_flight} calls in flight")
            code, took = stop(proc)
            local = run_rows(state)
            done = sum(local.get(r) == "completed" for r in runs)
            if code != 0 or done != in_flight:
                raise SystemExit(f"ops bench: exit {code}, {done}/{in_flight} runs completed")
            again = spawn_agent(state, None)
            wait_for(lambda: set(runs) <= cp.completed(), "the control plane to hear them")
            stop(again)
            rows.append(
                f"| SIGTERM, {in_flight} runs in flight | {took:.2f} | s to exit |"
                f" within the 20 s grace: met | connector calls answered 3 s after they began;"
                f" exit 0, {done}/{in_flight} completed before exit, all {in_flight} reported"
                " completed to the control plane |"
            )

            # 3. The same, past a 1 s grace: persisted, resumed on the next start.
            sink.delay = 8.0
            sink.calls = 0
            proc = spawn_agent(state, None, FLOW_AGENT_DRAIN_TIMEOUT="1")
            wait_for(lambda: _ready(state), "the agent to be ready")
            runs = _dispatch(cp, in_flight)
            wait_for(lambda: sink.calls >= in_flight, f"{in_flight} calls in flight")
            code, took = stop(proc)
            left = sum(run_rows(state).get(r) == "running" for r in runs)
            if code != 0:
                raise SystemExit(f"ops bench: exit {code} after the grace")
            sink.delay = 0.0
            began = time.monotonic()
            again = spawn_agent(state, None)
            wait_for(lambda: set(runs) <= cp.completed(), "the resumed runs to complete")
            resumed = time.monotonic() - began
            stop(again)
            rows.append(
                f"| SIGTERM past a 1 s grace, {in_flight} runs | {took:.2f} | s to exit |"
                f" | calls held 8 s: exit 0, {left}/{in_flight} persisted mid-call; the next"
                f" start completed all {in_flight} in {resumed:.1f} s (spawn included) |"
            )
        finally:
            sink.close()
            cp.stop()
    load_after = os.getloadavg()[0]
    section = _section(rows, notes, load_before, load_after, args)
    print(section)
    if args.append:
        with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as results:
            results.write("\n" + section)
    return 0


def _ready(state: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'daemon.lifecycle'").fetchone()
    except sqlite3.Error:
        return False
    return bool(row) and json.loads(row[0]).get("state") == "ready"


def _dispatch(cp: ControlPlane, count: int) -> list[str]:
    return [
        cp.call("POST", "/admin/v1/tenants/acme/runs", {"flow": "charge"})["run_id"]
        for _ in range(count)
    ]


def _import_time() -> float:
    """Median of three ``python -c 'import agent.daemon'``: interpreter start and imports."""
    took = []
    for _ in range(3):
        began = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", "import agent.daemon"], cwd=ROOT, env=clean_env(), check=True
        )
        took.append(time.monotonic() - began)
    return statistics.median(took)


def _section(
    rows: list[str], notes: list[str], before: float, after: float, args: argparse.Namespace
) -> str:
    lines = [
        "## Operations (`bench/ops.py`)",
        "",
        f"- {machine()}",
        f"- Load average (1 min) {before:.2f} at the start, {after:.2f} at the end",
        f"- Command: `python bench/ops.py{' --quick' if args.quick else ''}`",
        "",
        "| benchmark | result | unit | target | detail |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *notes,
    ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
