"""Revocation stops a real ``flow-agent run``; a new token brings it back with its runs.

The control plane (a process) revokes the agent while a run waits on a page.
The daemon stops by itself with exit 78 (systemd's RestartPreventExitStatus),
refuses to start again while revoked, and a start with a new pairing token
pairs again: the waiting run is still there and can be answered.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from .helpers import wait_for
from .test_serve import ControlPlane, Daemon, cp, http

__all__ = ["cp"]  # the fixture, imported for pytest

ASK: dict[str, Any] = {
    "format": "flow/v1",
    "id": "ask",
    "values": {"answer": {"type": "string", "access": "output"}},
    "start": "ask",
    "elements": {
        "ask": {
            "type": "page",
            "title": "Go on?",
            "outcomes": [{"id": "go", "label": "Go", "next": "mark"}],
        },
        "mark": {"type": "operator", "operations": [{"set": "answer", "to": "ok"}], "next": "fin"},
        "fin": {"type": "end"},
    },
}


def _agent_id(state: Path) -> str:
    return str(json.loads((state / "identity.json").read_text())["agent_id"])


def _synced(url: str) -> bool:
    status, body = http("GET", f"{url}/api/v1/flows")
    return status == 200 and [f["id"] for f in body["flows"]] == ["ask"]


def _run_status(state: Path, run_id: str) -> str:
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return str(row[0])


def test_revocation_stops_the_daemon_and_a_new_token_brings_its_runs_back(
    tmp_path: Path, cp: ControlPlane
) -> None:
    state = tmp_path / "agent"
    first_token = cp.token()
    daemon = Daemon(state, FLOW_AGENT_PAIRING_TOKEN=first_token)
    try:
        url = daemon.url()
        cp.publish(ASK)
        wait_for(lambda: _synced(url), what="the flow to sync")
        status, run = http("POST", f"{url}/api/v1/flows/ask/runs", {})
        assert status == 201 and run["status"] == "waiting", run
        old_id = _agent_id(state)

        cp.admin.call("POST", f"/admin/v1/tenants/acme/agents/{old_id}/revoke", {})
        code = daemon.proc.wait(30)  # by itself: no signal was sent
    finally:
        daemon.stop()
    log = daemon.stderr()
    assert code == 78, log
    assert "revoked this agent: stopping" in log and "Traceback" not in log
    assert _run_status(state, run["run_id"]) == "waiting"  # kept, not cancelled

    # While revoked it starts nothing: exit 78 with what to do.
    again = Daemon(state)
    code = again.proc.wait(60)
    again.stop()
    assert code == 78, again.stderr()
    assert "revoked this agent" in again.stderr() and "--token-file" in again.stderr()
    assert "Traceback" not in again.stderr()

    # The first start's token, still in the environment, is spent: both are said.
    stale = Daemon(state, FLOW_AGENT_PAIRING_TOKEN=first_token)
    code = stale.proc.wait(60)
    stale.stop()
    assert code == 78, stale.stderr()
    assert "revoked this agent, and the pairing token in the environment was refused" in (
        stale.stderr()
    )
    assert first_token not in stale.stderr()

    # A new token in the environment pairs again; the waiting run goes on.
    back = Daemon(state, FLOW_AGENT_PAIRING_TOKEN=cp.token())
    try:
        url = back.url()
        assert _agent_id(state) != old_id
        wait_for(lambda: _synced(url), what="the flow to sync after the new pairing")
        status, waiting = http("GET", f"{url}/api/v1/runs/{run['run_id']}")
        assert status == 200 and waiting["status"] == "waiting", waiting
        status, done = http(
            "POST",
            f"{url}/api/v1/runs/{run['run_id']}/resume",
            {"outcome": "go", "state_token": waiting["waiting"]["state_token"]},
        )
        assert status == 200 and done["status"] == "completed", done
        assert done["outputs"] == {"answer": "ok"}
    finally:
        code = back.stop()
    assert code == 0, back.stderr()
