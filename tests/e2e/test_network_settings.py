"""``flow-agent run`` applies the connector settings: a real daemon, a real target server.

The daemon, paired with a real control plane, starts runs through its local
API.  A connector that calls a loopback server completes by default; with
``http_deny_networks`` set (in the environment, then in the config file) the
same call faults with the guard's reason and the server sees no request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .helpers import wait_for
from .http_target import Target, ping_flow, target
from .test_serve import ControlPlane, Daemon, cp, http

__all__ = ["cp", "target"]  # fixtures, imported for pytest


def _start(daemon: Daemon, cp: ControlPlane, port: int) -> dict[str, Any]:
    url = daemon.url()
    cp.publish(ping_flow(port))

    def synced() -> bool:
        status, body = http("GET", f"{url}/api/v1/flows")
        return status == 200 and [f["id"] for f in body["flows"]] == ["ping"]

    wait_for(synced, what="the flow to sync")
    status, run = http("POST", f"{url}/api/v1/flows/ping/runs", {"inputs": {}})
    assert status == 201, run
    return dict(run)


def test_the_daemon_denies_a_network_from_the_environment(
    tmp_path: Path, cp: ControlPlane, target: Target
) -> None:
    state = tmp_path / "agent"
    daemon = Daemon(
        state,
        FLOW_AGENT_PAIRING_TOKEN=cp.token(),
        FLOW_AGENT_HTTP_DENY_NETWORKS="127.0.0.0/8",
    )
    try:
        run = _start(daemon, cp, target.port)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()
    assert run["status"] == "failed", run
    message = run["error"]["message"]
    assert "127.0.0.0/8" in message and "http_deny_networks" in message, message
    assert target.paths == []


def test_the_daemon_reads_the_networks_from_its_config_file(
    tmp_path: Path, cp: ControlPlane, target: Target
) -> None:
    state = tmp_path / "agent"
    config = tmp_path / "agent.toml"
    # Everything private is denied but the one host the flow needs.
    config.write_text(
        'http_deny_networks = ["private"]\n'
        f"http_allow_networks = [{json.dumps('127.0.0.1/32')}]\n"
        "http_max_response_bytes = 65536\n"
    )
    daemon = Daemon(state, FLOW_AGENT_PAIRING_TOKEN=cp.token(), FLOW_AGENT_CONFIG=str(config))
    try:
        run = _start(daemon, cp, target.port)
        assert run["status"] == "completed", run
        assert target.paths == ["/ping"]
        target.body_bytes = 100_000  # over the file's response limit
        status, big = http("POST", f"{daemon.url()}/api/v1/flows/ping/runs", {"inputs": {}})
        assert status == 201 and big["status"] == "failed", big
        assert "limit" in big["error"]["message"]
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()


def test_a_bad_network_setting_stops_the_daemon_with_78(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "agent", FLOW_AGENT_HTTP_DENY_NETWORKS="10.0.0.1/8")
    code = daemon.proc.wait(60)
    daemon.stop()
    assert code == 78, daemon.stderr()
    assert "http_deny_networks" in daemon.stderr() and "not a network" in daemon.stderr()
    assert "Traceback" not in daemon.stderr()
