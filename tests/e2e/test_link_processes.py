"""Real processes: ``flow-controlplane serve`` and ``flow-agent pair/run/status``.

SIGKILL the control plane while events stream, SIGKILL the agent in the
middle of a connector call, SIGTERM the daemon: nothing is lost, nothing
is reported twice, a killed run resumes and completes once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.errors import StateDirLocked
from agent.link.status import read_status
from agent.store.sqlite import SqliteStore

from .helpers import ROOT, CpProcess, StallingServer, clean_env, cp_process, wait_for

HELLO: dict[str, Any] = {
    "format": "flow/v1",
    "id": "hello",
    "start": "done",
    "elements": {"done": {"type": "end"}},
}


def _env(**extra: str) -> dict[str, str]:
    # The API on a free port: never the default port another agent may hold.
    return clean_env(**{"FLOW_AGENT_API_LISTEN": "127.0.0.1:0", **extra})


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[CpProcess]:
    with cp_process(tmp_path / "cp") as server:
        yield server


def _status(state: Path) -> dict[str, Any]:
    """What ``flow-agent status --json`` prints, read in this process (a poll costs no spawn)."""
    if not (state / "state.db").exists():
        return {"link": {"state": None}, "flows": [], "outbox": {"depth": None}}
    return read_status(state).to_json()


def _daemon(state: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=_env(FLOW_AGENT_TIMER_INTERVAL="0.1", **env),
    )  # fmt: skip


def _connected(state: Path) -> bool:
    return bool(_status(state)["link"]["state"] == "connected")


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return err


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``flow-agent ARGS`` in this process (the control plane is another process)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_pair_command_reports_used_expired_and_garbled_tokens(
    tmp_path: Path, cp: CpProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token = cp.token()
    token_file.write_text(token + "\n")
    state = tmp_path / "agent"
    code, out, err = _cli(
        capsys, "pair", "--token-file", str(token_file), "--state-dir", str(state)
    )
    assert code == 0, err
    assert "agent id:      ag_" in out and "tenant:        acme" in out
    assert f"control plane: {cp.url}" in out
    assert not token_file.exists()

    results = {
        "used": _cli(capsys, "pair", token, "--state-dir", str(tmp_path / "other")),
        "expired": _cli(capsys, "pair", cp.token(ttl="0.001"), "--state-dir", str(tmp_path / "l")),
        "garbled": _cli(capsys, "pair", token[:25], "--state-dir", str(tmp_path / "garbled")),
        "paired": _cli(capsys, "pair", cp.token(), "--state-dir", str(state)),
    }
    words = {"used": "already used", "expired": "expired", "garbled": "garbled",
             "paired": "already paired"}  # fmt: skip
    for case, (code, _, err) in results.items():
        assert code == 1, (case, err)
        assert words[case] in err, (case, err)
        assert token not in err and "Traceback" not in err

    status = _status(state)
    assert status["paired"] and status["identity"]["tenant"] == "acme"
    assert status["link"]["state"] == "never_connected" and not status["daemon"]["running"]


def test_run_pairs_from_the_environment_reports_and_stops_on_sigterm(
    tmp_path: Path, cp: CpProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "agent"
    token_file = tmp_path / "token"
    token_file.write_text(cp.token())
    proc = _daemon(state, FLOW_AGENT_PAIRING_TOKEN_FILE=str(token_file))
    try:
        wait_for(lambda: (state / "state.db").exists() and _connected(state), what="connect")
        assert not token_file.exists()
        cp.admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": HELLO})
        run = cp.admin.call("POST", "/admin/v1/tenants/acme/runs", {"flow": "hello", "wait": 10})
        assert run["status"] == "completed", run
        code, out, err = _cli(capsys, "status", "--state-dir", str(state), "--json")
        assert code == 0, err
        status = json.loads(out)
        assert status["daemon"] == {"running": True, "pid": proc.pid}
        assert status["link"]["state"] == "connected"
        assert status["flows"] == [
            {"id": "hello", "version": 1, "sha256": status["flows"][0]["sha256"],
             "origin": "control plane"}
        ]  # fmt: skip
        assert status["runs"] == {"completed": 1}
        with pytest.raises(StateDirLocked):  # what a second `flow-agent run` meets
            SqliteStore.open(state)
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    code, out, err = _cli(capsys, "status", "--state-dir", str(state))
    assert code == 0, err
    assert "daemon:          not running" in out
    assert "link:            disconnected since" in out


def test_control_plane_sigkill_mid_stream_loses_and_duplicates_no_event(
    tmp_path: Path, cp: CpProcess
) -> None:
    state = tmp_path / "agent"
    proc = _daemon(state, FLOW_AGENT_PAIRING_TOKEN=cp.token())
    try:
        wait_for(lambda: (state / "state.db").exists() and _connected(state), what="connect")
        agent_id = _status(state)["identity"]["agent_id"]
        cp.admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": HELLO})
        wait_for(lambda: bool(_status(state)["flows"]), what="the flow to sync")
        dispatched: list[str] = []
        for _round in range(2):
            for _ in range(20):
                run = cp.admin.call("POST", "/admin/v1/tenants/acme/runs", {"flow": "hello"})
                dispatched.append(run["run_id"])
            cp.kill()  # mid-stream: events of these runs are in flight or unsent
            cp.start()
            wait_for(lambda: cp.online(agent_id), what="the agent to reconnect")
        wait_for(
            lambda: cp.completed() >= set(dispatched),
            timeout=60,
            what="every dispatched run reported completed",
        )
        wait_for(lambda: _status(state)["outbox"]["depth"] == 0, what="the outbox to drain")
        events = cp.events(agent_id)
        last = _status(state)["outbox"]["last_seq"]
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert [e["seq"] for e in events] == list(range(1, last + 1))
    completed = [e["run_id"] for e in events if e["kind"] == "run.completed"]
    assert sorted(completed) == sorted(dispatched)


def _charge_flow(port: int) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "charge",
        "values": {"amount": {"type": "number", "access": "input", "default": 42}},
        "connectors": {"erp": {"type": "http", "base_url": f"http://127.0.0.1:{port}"}},
        "start": "charge",
        "elements": {
            "charge": {
                "type": "message",
                "connector": "erp",
                "action": "POST /slow",
                "body": {"amount": {"ref": "amount"}},
                "timeout": 60,
                "next": "done",
            },
            "done": {"type": "end"},
        },
    }


def test_agent_sigkill_mid_run_resumes_and_reports_completed_once(
    tmp_path: Path, cp: CpProcess
) -> None:
    state = tmp_path / "agent"
    with StallingServer() as sink:
        proc = _daemon(state, FLOW_AGENT_PAIRING_TOKEN=cp.token())
        try:
            wait_for(lambda: (state / "state.db").exists() and _connected(state), what="connect")
            agent_id = _status(state)["identity"]["agent_id"]
            doc = _charge_flow(sink.port)
            cp.admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": doc})
            wait_for(lambda: bool(_status(state)["flows"]), what="the flow to sync")
            run_id = cp.admin.call("POST", "/admin/v1/tenants/acme/runs", {"flow": "charge"})[
                "run_id"
            ]
            wait_for(lambda: len(sink.keys) == 1, what="the connector call")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
        sink.release()
        again = _daemon(state)
        try:
            wait_for(
                lambda: (
                    cp.admin.call("GET", f"/admin/v1/tenants/acme/runs/{run_id}")["status"]
                    == "completed"
                ),
                what="the resumed run reported completed",
            )
            wait_for(lambda: _status(state)["outbox"]["depth"] == 0, what="the outbox to drain")
        finally:
            err = _stop(again)
        assert again.returncode == 0, err
    events = [e for e in cp.events(agent_id) if e["run_id"] == run_id]
    kinds = [e["kind"] for e in events]
    assert kinds.count("run.started") == 1 and kinds.count("run.completed") == 1
    assert len(sink.keys) == 2 and len(set(sink.keys)) == 1  # one effect, one idempotency key
