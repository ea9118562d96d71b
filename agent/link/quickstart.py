"""``flow-agent quickstart``: a control plane and an agent on loopback, in one process.

The reference control plane runs in this process (its aiohttp server on
127.0.0.1, port 0), the agent too, on the same event loop; everything in
between is the real thing: the pairing token travels over HTTP, flows are
signed, pushed and verified, runs are dispatched over the websocket and their
events come back through the outbox.  State lives in a temporary directory
that is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import tempfile
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

from agent.errors import OperationError
from agent.identity import load_private_key
from agent.link.pairing import pair
from agent.settings import Settings
from agent.store.sqlite import SqliteStore

TENANT: Final = "demo"
STEP_TIMEOUT: Final = 15.0
# The demo's runs: (flow id, inputs, what it shows).
DEMO_RUNS: Final = (
    ("hello", {"name": "quickstart"}, "a pure flow: operator, decision, end"),
    ("invoice-approval", {"amount": 300}, "a subflow, then automatic approval"),
    ("invoice-approval", {"amount": 700}, "a subflow, then a page that waits for a person"),
)

Say = Callable[[str], None]


def bundled_examples() -> Traversable:
    """The example flows shipped inside the package, wherever it is installed.

    They live in ``agent/examples/`` (package data); a source checkout's
    ``examples/`` links to them for the docs and the tests.
    """
    return resources.files("agent") / "examples"


def example_flows(root: Traversable | None = None) -> list[dict[str, Any]]:
    """The bundled examples, subflows first (a flow's subflows must be there before it runs)."""
    root = bundled_examples() if root is None else root
    paths = _json_files(root / "flows") + _json_files(root)
    if not paths:
        raise OperationError(
            f"no example flows found in {root}",
            hint="the installation is incomplete: reinstall flow-agent",
        )
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


def _json_files(folder: Traversable) -> list[Traversable]:
    if not folder.is_dir():
        return []
    found = [item for item in folder.iterdir() if item.is_file() and item.name.endswith(".json")]
    return sorted(found, key=lambda item: item.name)


async def _within(what: str, waiter: Any) -> Any:
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            return await waiter
    except TimeoutError:
        raise OperationError(f"quickstart: timed out waiting for {what}") from None


async def quickstart(*, once: bool, say: Say = print, workdir: Path | None = None) -> int:
    from agent.daemon import Agent
    from controlplane.app import start_server
    from controlplane.service import ControlPlane
    from controlplane.settings import Settings as CpSettings

    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="flow-agent-quickstart-")) if workdir is None else workdir
    server = None
    try:
        cp = ControlPlane(CpSettings(data_dir=root / "controlplane", region="local"))
        server = await start_server(cp, host="127.0.0.1", port=0)
        say(f"control plane   {server.url} (region local), data in {root / 'controlplane'}")
        await cp.create_tenant(TENANT)
        token = (await cp.create_token(TENANT, ttl=600))["token"]
        # A free port: the demo must not fail because 8355 is taken; the URL is printed.
        settings = Settings(state_dir=root / "agent", status_interval=5.0, api_listen="127.0.0.1:0")
        store = SqliteStore.open(settings.state_dir, synchronous="normal")
        try:
            paired = await pair(token, state_dir=settings.state_dir, store=store)
            identity = paired.identity
            say(f"agent           {identity.agent_id} paired with tenant {identity.tenant}")
            agent = Agent(
                settings,
                store=store,
                identity=identity,
                key=load_private_key(settings.state_dir),
                serve_api=True,
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(agent.serve(), name="agent")
                try:
                    await _within("the local API to listen", agent.api_started.wait())
                    say(f"local API       {agent.api_url}/api/v1 (no token: loopback only)")
                    ok = await _demo(cp, agent, say)
                    _urls(server.url, cp.admin_key, settings.state_dir, say, once=once)
                    say(f"player          {agent.api_url}/ui/  (start flows, answer pages)")
                    if not once:
                        await _until_interrupted()
                finally:
                    agent.request_stop()
        finally:
            store.close()
        return 0 if ok else 1
    finally:
        if server is not None:
            await server.stop()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


async def _demo(cp: Any, agent: Any, say: Say) -> bool:
    await _within("the agent to connect", agent.link.ready.wait())
    flows = example_flows()
    for doc in flows:
        flow, _ = await cp.publish(TENANT, doc)
        say(f"published       {flow.flow_id} v{flow.version}")
    wanted = {doc["id"] for doc in flows}

    async def synced() -> None:
        while not wanted <= {ref.id for ref in agent.sync.inventory()}:
            await asyncio.sleep(0.02)

    await _within("the agent to activate the published flows", synced())
    say("synced          " + ", ".join(sorted(wanted)) + " active on the agent")
    ok = True
    for flow_id, inputs, what in DEMO_RUNS:
        run, _ = await cp.dispatch_run(TENANT, flow=flow_id, inputs=inputs)
        record = await cp.get_run(TENANT, run.id, wait=STEP_TIMEOUT)
        result = record.run_result()
        shown = ", ".join(f"{k}={v}" for k, v in inputs.items())
        say(f"run             {run.id} {flow_id}({shown}): {what}")
        say(f"  status        {result['status']}")
        say(f"  path          {' -> '.join(result.get('path') or []) or '(none)'}")
        waiting = result.get("waiting")
        if waiting:
            say(f"  waiting at    {waiting.get('element')} ({waiting.get('kind')})")
        if result.get("error"):
            say(f"  error         {result['error'].get('message')}")
        ok = ok and result["status"] in ("completed", "waiting")
    say(
        "reported        outputs stay on the agent (report_outputs = false);"
        " the control plane saw statuses and paths"
    )
    return ok


def _urls(url: str, admin_key: str, state_dir: Path, say: Say, *, once: bool) -> None:
    say(f"open            {url}/  (admin key: {admin_key})")
    if not once:
        say(f"agent status    flow-agent status --state-dir {state_dir}")
        say("serving until Ctrl-C; everything is removed afterwards")


async def _until_interrupted() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


__all__ = ["DEMO_RUNS", "bundled_examples", "example_flows", "quickstart"]
