"""``flow-agent run`` serves the local API: real processes, real sockets.

The control plane (``flow-controlplane serve``), the agent daemon and the
example connector service each run as a process of their own.  The agent
listens on ``127.0.0.1:0``; the URL it chose is read from its store.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agent.api.webhooks import sign
from tests.support.flows import HELLO

from .helpers import ROOT, CpProcess, clean_env, free_port, wait_for

HOOKED: dict[str, Any] = {**HELLO, "id": "hooked", "triggers": [{"webhook": True}]}


def _lines(stream: Any, into: list[str]) -> threading.Thread:
    """Keep reading a pipe (so the process never blocks on it), remembering the lines."""

    def pump() -> None:
        for line in stream:
            into.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


class ControlPlane(CpProcess):
    """``flow-controlplane serve`` with tenant ``acme``, started when made."""

    def __init__(self, data: Path) -> None:
        super().__init__(data)
        self.start()
        self.admin.call("POST", "/admin/v1/tenants", {"name": "acme"})

    def publish(self, doc: dict[str, Any]) -> None:
        self.admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": doc})

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.admin.call("GET", f"/admin/v1/tenants/acme/runs/{run_id}"))

    def reported(self, run_id: str, status: str) -> bool:
        try:
            return bool(self.run(run_id)["status"] == status)
        except Exception:
            return False

    def stop(self) -> None:
        self.kill()


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cp")
    try:
        yield plane
    finally:
        plane.stop()


class Daemon:
    """``flow-agent run`` with its API on a free loopback port (unless told otherwise)."""

    def __init__(self, state: Path, **env: str) -> None:
        self.state = state
        settings = {"FLOW_AGENT_API_LISTEN": "127.0.0.1:0", "FLOW_AGENT_TIMER_INTERVAL": "0.1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(state)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env=clean_env(FLOW_AGENT_LOG_FORMAT="text", **{**settings, **env}),
        )  # fmt: skip
        self.err: list[str] = []  # its log (stdout) and its errors (stderr)
        self._pump = _lines(self.proc.stdout, self.err)

    def url(self) -> str:
        """The API's URL, once the daemon recorded it."""
        found: list[str] = []

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited {self.proc.returncode}: {self.stderr()}")
            found[:] = [_meta(self.state, "api.url") or ""]
            return bool(found[0])

        wait_for(listening, what="the API to listen")
        return found[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._pump.join(10)
        return code

    def stderr(self) -> str:
        return "".join(self.err)


def _meta(state: Path, key: str) -> str | None:
    db = state / "state.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def http(
    method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    text = raw.decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def test_run_serves_the_api_and_api_runs_are_reported(tmp_path: Path, cp: ControlPlane) -> None:
    state = tmp_path / "agent"
    daemon = Daemon(state, FLOW_AGENT_PAIRING_TOKEN=cp.token())
    try:
        url = daemon.url()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        wait_for(lambda: f"local API listening on {url}" in daemon.stderr(), what="the log line")
        cp.publish(HELLO)
        cp.publish(HOOKED)

        def synced() -> bool:
            status, body = http("GET", f"{url}/api/v1/flows")
            return status == 200 and {f["id"] for f in body["flows"]} == {"hello", "hooked"}

        wait_for(synced, what="the flows to sync")
        wait_for(lambda: http("GET", f"{url}/readyz")[0] == 200, what="/readyz to turn ready")

        status, started = http("POST", f"{url}/api/v1/flows/hello/runs", {"inputs": {"name": "x"}})
        assert status == 201 and started["status"] == "completed", started
        assert started["outputs"] == {"greeting": "Hello, x!"}
        status, hooked = http("POST", f"{url}/api/v1/hooks/hooked", {"name": "hook"})
        assert status == 201 and hooked["outputs"] == {"greeting": "Hello, hook!"}, hooked

        # Reported through the outbox like a dispatched run (outputs stay here).
        for run_id in (str(started["run_id"]), str(hooked["run_id"])):
            wait_for(partial(cp.reported, run_id, "completed"), what=f"{run_id} reported")
        status, metrics = http("GET", f"{url}/metrics")
        assert status == 200
        assert 'flow_agent_runs_completed_total{flow="hello"} 1.0' in metrics
        assert 'flow_agent_runs_completed_total{flow="hooked"} 1.0' in metrics
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()
    assert _meta(state, "api.url") == ""  # a stopped agent listens nowhere
    assert "Traceback" not in daemon.stderr()


def test_beyond_loopback_the_api_needs_a_token_and_refuses_to_start_without_one(
    tmp_path: Path, cp: ControlPlane
) -> None:
    state = tmp_path / "agent"
    refused = Daemon(state, FLOW_AGENT_PAIRING_TOKEN=cp.token(), FLOW_AGENT_API_LISTEN="0.0.0.0:0")
    code = refused.proc.wait(30)
    refused.stop()
    assert code == 78, refused.stderr()
    assert "beyond loopback" in refused.stderr() and "flow-agent api-token" in refused.stderr()
    assert "Traceback" not in refused.stderr()

    made = subprocess.run(
        [sys.executable, "-m", "agent.cli", "api-token", "--state-dir", str(state)],
        capture_output=True, text=True, cwd=ROOT, env=clean_env(), timeout=30,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and len(token) >= 32

    daemon = Daemon(state, FLOW_AGENT_API_LISTEN="0.0.0.0:0")  # paired by the first start
    try:
        url = daemon.url()
        port = url.rsplit(":", 1)[1]
        local = f"http://127.0.0.1:{port}"
        assert http("GET", f"{local}/livez")[0] == 200  # probes stay open
        status, problem = http("GET", f"{local}/api/v1/flows")
        assert status == 401 and problem["type"].endswith(":unauthorized")
        wrong = {"Authorization": "Bearer " + "x" * 43}
        assert http("GET", f"{local}/api/v1/flows", headers=wrong)[0] == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert http("GET", f"{local}/api/v1/flows", headers=auth)[0] == 200
    finally:
        assert daemon.stop() == 0, daemon.stderr()


def test_a_taken_port_stops_the_start_with_a_message(tmp_path: Path, cp: ControlPlane) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(
            tmp_path / "agent",
            FLOW_AGENT_PAIRING_TOKEN=cp.token(),
            FLOW_AGENT_API_LISTEN=f"127.0.0.1:{port}",
        )
        code = daemon.proc.wait(30)
        daemon.stop()
    assert code == 1, daemon.stderr()
    assert f"cannot listen on 127.0.0.1:{port}" in daemon.stderr()
    assert "api_listen" in daemon.stderr() and "Traceback" not in daemon.stderr()


class ConnectorService:
    """examples/connector-service/service.py, as its README starts it."""

    def __init__(self, token: str, *, delay: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "connector-service" / "service.py"),
             "--port", str(self.port), "--token", token, "--callback-delay", str(delay)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=clean_env(),
        )  # fmt: skip

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                assert self.proc.poll() is None, "the connector service exited"
                return False

        wait_for(up, what="the connector service")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_a_connector_service_answers_wait_then_calls_back_and_the_run_completes(
    tmp_path: Path, cp: ControlPlane
) -> None:
    state = tmp_path / "agent"
    service_token = "service-token-for-the-example"
    _pair_with_secret(state, cp, "approvals-token", service_token)
    service = ConnectorService(service_token, delay=0.3)
    flow = json.loads((ROOT / "examples" / "connector-service" / "flow.json").read_text())
    flow["connectors"]["approvals"]["url"] = service.url
    daemon = Daemon(state)
    try:
        url = daemon.url()
        cp.publish(flow)
        wait_for(
            lambda: http("GET", f"{url}/api/v1/flows")[1].get("flows") != [],
            what="the flow to sync",
        )
        status, started = http(
            "POST", f"{url}/api/v1/flows/service-approval/runs", {"inputs": {"amount": 500}}
        )
        assert status == 201, started
        run_id = started["run_id"]
        # The service answered "wait": the run waits for its callback.
        assert started["status"] == "waiting", started
        assert started["waiting"]["kind"] == "callback"
        assert started["waiting"]["element"] == "approve"
        result: dict[str, Any] = {}

        def completed() -> bool:
            result.update(http("GET", f"{url}/api/v1/runs/{run_id}")[1])
            return bool(result["status"] == "completed")

        wait_for(completed, what="the service's callback to complete the run")
        assert result["outputs"]["total"] == 600 and result["outputs"]["approved"] is True
        assert result["outputs"]["ticket"].startswith("T-")
        assert result["path"] == ["quote", "approve", "done"]
        wait_for(lambda: cp.reported(run_id, "completed"), what="the run reported")
    finally:
        code = daemon.stop()
        service.stop()
    assert code == 0, daemon.stderr()
    assert service_token not in daemon.stderr()


def _pair_with_secret(state: Path, cp: ControlPlane, name: str, value: str) -> None:
    """``flow-agent pair``, then ``flow-agent secret set NAME`` (the value on stdin)."""
    paired = subprocess.run(
        [sys.executable, "-m", "agent.cli", "pair", cp.token(), "--state-dir", str(state)],
        capture_output=True, text=True, cwd=ROOT, env=clean_env(), timeout=30,
    )  # fmt: skip
    assert paired.returncode == 0, paired.stderr
    stored = subprocess.run(
        [sys.executable, "-m", "agent.cli", "secret", "set", name, "--state-dir", str(state)],
        input=value, capture_output=True, text=True, cwd=ROOT, env=clean_env(), timeout=30,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stderr


def test_a_signed_webhook_starts_a_run_through_the_daemon(tmp_path: Path, cp: ControlPlane) -> None:
    state = tmp_path / "agent"
    secret = "hook-secret-value-for-the-e2e"
    _pair_with_secret(state, cp, "hook-secret", secret)
    signed = {**HELLO, "id": "signed", "triggers": [{"webhook": True, "secret": "hook-secret"}]}
    daemon = Daemon(state)
    try:
        url = daemon.url()
        cp.publish(signed)
        wait_for(
            lambda: http("GET", f"{url}/api/v1/flows")[1].get("flows") != [],
            what="the flow to sync",
        )
        body = json.dumps({"name": "signed"}).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Flow-Timestamp": stamp,
            "X-Flow-Signature": sign(secret, stamp, body),
        }

        def post(with_headers: dict[str, str]) -> tuple[int, Any]:
            request = urllib.request.Request(
                f"{url}/api/v1/hooks/signed", data=body, method="POST", headers=with_headers
            )
            try:
                with urllib.request.urlopen(request, timeout=20) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, result = post(headers)
        assert status == 201 and result["outputs"] == {"greeting": "Hello, signed!"}, result
        status, replayed = post(headers)
        assert status == 409 and replayed["type"].endswith(":delivery_replayed")
        status, unsigned = post({"Content-Type": "application/json"})
        assert status == 401 and unsigned["type"].endswith(":signature_missing")
        wait_for(partial(cp.reported, str(result["run_id"]), "completed"), what="the report")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()
    assert secret not in daemon.stderr()
