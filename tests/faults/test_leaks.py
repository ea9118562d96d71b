"""Case 33: a known secret never leaks from a running daemon, nor into a core dump.

The canary goes into the agent's secret store, from there into connector
headers; the target quotes it back in its errors and headers.  The unit-level
canary (tests/test_secrets_canary.py) covers every connector type in
process; this is the whole daemon, the control plane it reports to, and the
process itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.net import LocalServer, serve_app

from .conftest import Record
from .harness import ROOT, ControlPlaneThread, Daemon, LoopThread, agent_env, wait_for

CANARY = "canary-5e1d7a93b0c2"


def _flow(url: str) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "leak",
        "values": {
            "tok": {"type": "secret", "secret": "erp-token"},
            "problem": {"type": "object", "access": "output"},
        },
        "connectors": {
            "erp": {
                "type": "http",
                "base_url": url,
                "headers": {"Authorization": "Bearer {{ tok }}"},
            }
        },
        "start": "call",
        "elements": {
            "call": {
                "type": "message",
                "connector": "erp",
                "action": "POST /pay",
                "retry": {"attempts": 2, "backoff": 0},
                "next": "keep",
                "fault": "keep",
            },
            "keep": {
                "type": "operator",
                "operations": [{"set": "problem", "to": {"ref": "fault"}}],
                "next": "failed",
            },
            "failed": {"type": "end", "status": "failed", "message": "{{ fault.message }}"},
        },
    }


async def _leaky() -> LocalServer:
    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        return web.json_response(
            {"message": f"credential {auth} refused", "echo": auth},
            status=500,
            headers={"X-Echo": auth},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await serve_app(app, access_log=None)


def _limits(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line
    return ""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="running the daemon as another user needs root and setpriv",
)
def test_33_no_secret_in_logs_reports_files_or_core_dumps(
    open_base: Path, cp: ControlPlaneThread, harness: LoopThread, record: Record
) -> None:
    """Case 33. The canary in the secret store, quoted back by the target in errors.

    The daemon runs as ``nobody`` (so the kernel's per-process dump rules
    show), with report_outputs on (the widest report).  Pass: the canary
    is in no log line, no report stored by the control plane, no file of
    the agent (database and WAL included) or of the control plane; the run
    failed with a message that names the refusal, not the credential; and no core dump can be
    written: the process's core size limit is 0 and it is not dumpable
    (its /proc files belong to root, not to the user it runs as).
    """
    leaky = harness.call(_leaky())
    state = open_base / "state"
    try:
        cp.publish(_flow(leaky.url))
        env = agent_env()
        token = open_base / "token"
        token.write_text(cp.token())
        for args, stdin in (
            (["pair", "--token-file", str(token)], None),
            (["secret", "set", "erp-token"], CANARY),
        ):
            done = subprocess.run(
                [sys.executable, "-m", "agent.cli", *args, "--state-dir", str(state)],
                input=stdin,
                text=True,
                capture_output=True,
                cwd=ROOT,
                env=env,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        subprocess.run(["chown", "-R", "nobody:nogroup", str(state)], check=True)
        daemon = Daemon(
            state,
            log=open_base / "agent.log",
            env={"FLOW_AGENT_REPORT_OUTPUTS": "true"},
            prefix=["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"],
        )
        daemon.start()
        try:
            wait_for(daemon.connected, "the agent to connect", timeout=60)
            run_id = cp.dispatch("leak")
            assert run_id is not None
            wait_for(
                lambda: (
                    cp.read("SELECT status FROM runs WHERE id = ?", (run_id,))[0][0] == "failed"
                ),
                "the run to fail",
            )
            limits = _limits(daemon.pid)
            environ_owner = Path(f"/proc/{daemon.pid}/environ").stat().st_uid
            assert daemon.terminate() == 0
        finally:
            daemon.stop()
        result = cp.read("SELECT result FROM runs WHERE id = ?", (run_id,))[0][0]
        assert CANARY not in result
        haystack = daemon.log_text().encode()
        for top in (state, cp.settings.data_dir):
            for path in top.rglob("*"):
                if path.is_file():
                    haystack += path.read_bytes()
        assert CANARY.encode() not in haystack
        assert limits.split()[4:6] == ["0", "0"], limits  # soft and hard: no core file, ever
        assert environ_owner == 0, "the daemon is dumpable: a crash could write its memory out"
    finally:
        harness.call(leaky.close())
    record(33, canary_found=0, core_limit="0 0", dumpable=False)
