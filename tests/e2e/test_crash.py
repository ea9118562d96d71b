"""SIGKILL a real ``flow-agent exec`` mid-run, finish it with ``resume``."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from .helpers import StallingServer, run_agent, run_rows, spawn_agent, wait_for, write_flow

TIMER_FLOW: dict[str, Any] = {
    "format": "flow/v1",
    "id": "timer",
    "values": {
        "count": {"type": "number", "access": "output", "default": 0},
        "trail": {"type": "list", "access": "output", "default": []},
    },
    "start": "before",
    "elements": {
        "before": {
            "type": "operator",
            "next": "pause",
            "operations": [{"add": "count", "by": 1}, {"append": "trail", "item": "before"}],
        },
        "pause": {"type": "wait", "seconds": 2, "next": "after"},
        "after": {
            "type": "operator",
            "next": "done",
            "operations": [{"multiply": "count", "by": 10}, {"append": "trail", "item": "after"}],
        },
        "done": {"type": "end"},
    },
}


def _result(proc_stdout: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(proc_stdout)
    return result


def _status(state_dir: Path, status: str) -> bool:
    return any(row[1] == status for row in run_rows(state_dir))


def test_sigkill_during_wait_then_resume(tmp_path: Path) -> None:
    flow = write_flow(tmp_path, TIMER_FLOW)
    reference = run_agent("exec", str(flow), "--json")
    assert reference.returncode == 0, reference.stderr
    expected = _result(reference.stdout)

    state = tmp_path / "state"
    proc = spawn_agent("exec", str(flow), "--state-dir", str(state), "--json")
    try:
        wait_for(lambda: _status(state, "waiting"), what="the run to wait on its timer")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    ((run_id, _, _),) = run_rows(state)

    resumed = run_agent("resume", run_id, "--state-dir", str(state), "--json")
    assert resumed.returncode == 0, resumed.stderr
    result = _result(resumed.stdout)
    assert result["status"] == "completed"
    assert result["outputs"] == expected["outputs"] == {"count": 10, "trail": ["before", "after"]}
    assert result["path"] == expected["path"]


def _connector_flow(port: int) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "charge",
        "values": {
            "amount": {"type": "number", "access": "input"},
            "ticket": {"type": "string", "access": "output"},
            "calls": {"type": "number", "access": "output", "default": 0},
        },
        "connectors": {"erp": {"type": "http", "base_url": f"http://127.0.0.1:{port}"}},
        "start": "prepare",
        "elements": {
            "prepare": {
                "type": "operator",
                "next": "charge",
                "operations": [{"add": "calls", "by": 1}],
            },
            "charge": {
                "type": "message",
                "connector": "erp",
                "action": "POST /slow",
                "body": {"amount": {"ref": "amount"}},
                "outputs": {"ticket": "body.id"},
                "timeout": 60,
                "next": "done",
            },
            "done": {"type": "end"},
        },
    }


def test_sigkill_during_connector_call_then_resume(tmp_path: Path) -> None:
    with StallingServer() as server:
        flow = write_flow(tmp_path, _connector_flow(server.port))
        state = tmp_path / "state"
        proc = spawn_agent(
            "exec", str(flow), "--state-dir", str(state), "--input", "amount=42", "--json"
        )
        try:
            wait_for(lambda: len(server.keys) == 1, what="the connector call to arrive")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        ((run_id, status, _),) = run_rows(state)
        assert status == "running"  # committed with the call pending, before the call

        server.release()
        resumed = run_agent("resume", run_id, "--state-dir", str(state), "--json")
        assert resumed.returncode == 0, resumed.stderr
        result = _result(resumed.stdout)

    assert result["status"] == "completed"
    assert result["outputs"] == {"ticket": "T-42", "calls": 1}
    assert len(server.keys) == 2  # the call, and its repeat after the crash
    assert len(set(server.keys)) == 1  # ... with one Idempotency-Key for that visit
    assert server.keys[0] == f"{run_id}:2"


def test_second_process_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    slow = {
        **TIMER_FLOW,
        "elements": {
            **TIMER_FLOW["elements"],
            "pause": {"type": "wait", "seconds": 600, "next": "after"},
        },
    }
    flow = write_flow(tmp_path, slow)
    state = tmp_path / "state"
    proc = spawn_agent("exec", str(flow), "--state-dir", str(state), "--max-wait", "900")
    try:
        wait_for(lambda: _status(state, "waiting"), what="the run to wait on its timer")
        ((run_id, _, before),) = run_rows(state)
        second = run_agent("resume", run_id, "--state-dir", str(state))
        assert second.returncode == 1
        assert "in use by another flow-agent process" in second.stderr
        assert f"pid {proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        ((_, _, after),) = run_rows(state)
        assert after == before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
