"""Run dispatch: start_run, idempotency, state from events, waiting, cancel, re-send."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from cphelpers import HELLO_FLOW, Admin, LinkClient, pair

from agent.protocol.frames import Ack, CancelRun, Event, Events, RunAck, StartRun
from controlplane.app import RunningServer
from controlplane.db import MIGRATIONS, Database

RUNS = "/admin/v1/tenants/acme/runs"


def result(run_id: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "flow": "hello",
        "version": 1,
        "status": status,
        "outputs": {},
        "path": ["done"],
        "waiting": None,
        "error": None,
        **extra,
    }


def ev(seq: int, kind: str, run_id: str, data: dict[str, Any]) -> Event:
    return Event(seq=seq, kind=kind, run_id=run_id, at="2026-01-01T00:00:00+00:00", data=data)


async def online(admin: Admin, server: RunningServer) -> tuple[LinkClient, str]:
    await admin.publish(HELLO_FLOW)
    paired = await pair(admin)
    client = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    await client.ready()
    return client, paired.agent_id


async def test_dispatch_sends_start_run(admin: Admin, tenant: str, server: RunningServer) -> None:
    client, agent_id = await online(admin, server)
    status, run = await admin.call("POST", RUNS, {"flow": "hello", "inputs": {"amount": "7"}})
    assert status == 201
    assert run["run_id"].startswith("r_")
    assert (run["status"], run["agent"], run["created"]) == ("dispatched", agent_id, True)
    start = await client.recv()
    assert start == StartRun(
        run_id=run["run_id"], flow="hello", inputs={"amount": "7"}, version=None
    )


async def test_run_id_is_idempotent(admin: Admin, tenant: str, server: RunningServer) -> None:
    client, _ = await online(admin, server)
    body = {"flow": "hello", "run_id": "order-42"}
    first = await asyncio.gather(*(admin.call("POST", RUNS, body) for _ in range(3)))
    assert sorted(status for status, _ in first) == [200, 200, 201]
    assert {run["run_id"] for _, run in first} == {"order-42"}
    assert (await client.recv()) == StartRun(run_id="order-42", flow="hello", inputs={})
    status, again = await admin.call("POST", RUNS, body)
    assert (status, again["created"]) == (200, False)
    # Exactly one start_run went out: the next frame answers our events batch.
    await client.send(Events(events=(ev(1, "element.entered", "order-42", {}),)))
    assert await client.recv() == Ack(seq=1)
    runs = (await admin.ok("GET", RUNS))["runs"]
    assert [r["run_id"] for r in runs] == ["order-42"]


async def test_run_state_follows_events_and_wait_returns_the_result(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    client, _ = await online(admin, server)

    async def agent_side() -> None:
        start = await client.recv_type(StartRun)
        await client.send(RunAck(run_id=start.run_id, accepted=True))
        await client.send(
            Events(
                events=(
                    ev(1, "run.started", start.run_id, result(start.run_id, "running")),
                    ev(
                        2,
                        "run.completed",
                        start.run_id,
                        result(start.run_id, "completed", outputs={"greeting": "hi"}),
                    ),
                )
            )
        )
        await client.recv_type(Ack)

    agent_task = asyncio.create_task(agent_side())
    status, run = await admin.call("POST", RUNS, {"flow": "hello", "wait": 30})
    await agent_task
    assert status == 201
    assert run["status"] == "completed"
    assert run["result"]["outputs"] == {"greeting": "hi"}
    assert run["result"]["status"] == "completed"
    stored = await admin.ok("GET", f"{RUNS}/{run['run_id']}")
    assert stored["result"] == result(run["run_id"], "completed", outputs={"greeting": "hi"})


async def test_a_dispatched_run_records_the_version_the_agent_reports(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    client, _ = await online(admin, server)
    run = await admin.ok("POST", RUNS, {"flow": "hello"})
    assert run["version"] is None  # none asked for: the agent runs its active version
    start = await client.recv_type(StartRun)
    await client.send(RunAck(run_id=start.run_id, accepted=True))
    await client.send(Events(events=(ev(1, "run.started", start.run_id, {"flow": "hello"}),)))
    await client.recv_type(Ack)
    assert (await admin.ok("GET", f"{RUNS}/{start.run_id}"))["version"] is None
    await client.send(
        Events(events=(ev(2, "run.completed", start.run_id, result(start.run_id, "completed")),))
    )
    await client.recv_type(Ack)
    listed = (await admin.ok("GET", RUNS))["runs"]
    assert [(r["run_id"], r["version"], r["result"]["version"]) for r in listed] == [
        (start.run_id, 1, 1)
    ]
    assert (await admin.ok("GET", f"{RUNS}/{start.run_id}"))["version"] == 1


def test_runs_stored_without_their_version_get_it_from_their_result(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    with closing(sqlite3.connect(path)) as old:
        old.executescript(";".join(MIGRATIONS[:2]) + ";PRAGMA user_version=2;")
        old.execute("INSERT INTO tenants VALUES ('acme', 0)")
        for run_id, stored in (("r_1", result("r_1", "completed")), ("r_2", None)):
            old.execute(
                "INSERT INTO runs(id, tenant, flow, agent_id, inputs, status, result, origin,"
                " created_at, updated_at) VALUES (?, 'acme', 'hello', 'ag_1', '{}', 'completed',"
                " ?, 'controlplane', 0, 0)",
                (run_id, None if stored is None else json.dumps(stored)),
            )
        old.commit()
    db = Database(path)
    db.open()
    try:
        rows = db.conn.execute("SELECT id, version FROM runs ORDER BY id").fetchall()
        assert [tuple(r) for r in rows] == [("r_1", 1), ("r_2", None)]
    finally:
        db.close()


async def test_waiting_for_a_person_releases_the_wait(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    client, _ = await online(admin, server)
    run = await admin.ok("POST", RUNS, {"flow": "hello"})
    waiter = asyncio.create_task(admin.call("GET", f"{RUNS}/{run['run_id']}?wait=30"))
    await client.recv_type(StartRun)
    waiting = {
        "element": "approve",
        "kind": "input",
        "state_token": "t",
        "outcomes": [],
        "fields": [],
        "until": None,
    }
    await client.send(
        Events(
            events=(
                ev(
                    1,
                    "run.waiting",
                    run["run_id"],
                    result(run["run_id"], "waiting", waiting=waiting),
                ),
            )
        )
    )
    status, answer = await waiter
    assert status == 200
    assert answer["status"] == "waiting"
    assert answer["result"]["waiting"]["element"] == "approve"


async def test_refused_run(admin: Admin, tenant: str, server: RunningServer) -> None:
    client, _ = await online(admin, server)
    run = await admin.ok("POST", RUNS, {"flow": "hello"})
    await client.recv_type(StartRun)
    # An agent older than run_ack's message sends the reason code alone.
    await client.send(RunAck(run_id=run["run_id"], accepted=False, reason="draining"))
    answer = await admin.ok("GET", f"{RUNS}/{run['run_id']}?wait=30")
    assert (answer["status"], answer["reason"], answer["reason_message"]) == (
        "refused",
        "draining",
        None,
    )
    assert answer["result"]["status"] == "failed"
    assert answer["result"]["error"] == {
        "element": None,
        "message": "the agent refused the run: draining",
    }
    told = await admin.ok("POST", RUNS, {"flow": "hello"})
    await client.recv_type(StartRun)
    await client.send(
        RunAck(
            run_id=told["run_id"],
            accepted=False,
            reason="inputs_invalid",
            message="input 'amount' is not a number",
        )
    )
    answer = await admin.ok("GET", f"{RUNS}/{told['run_id']}?wait=30")
    assert answer["reason_message"] == "input 'amount' is not a number"
    assert answer["result"]["error"]["message"] == (
        "the agent refused the run: input 'amount' is not a number (inputs_invalid)"
    )


async def test_dispatch_needs_an_online_agent_and_a_published_flow(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    status, answer = await admin.call("POST", RUNS, {"flow": "hello"})
    assert (status, answer["error"]) == (404, "flow_unknown")
    await admin.publish(HELLO_FLOW)
    status, answer = await admin.call("POST", RUNS, {"flow": "hello"})
    assert (status, answer["error"]) == (409, "no_agent_online")
    paired = await pair(admin)
    status, answer = await admin.call("POST", RUNS, {"flow": "hello", "agent": paired.agent_id})
    assert (status, answer["error"]) == (409, "agent_offline")
    status, answer = await admin.call("POST", RUNS, {"flow": "hello", "agent": "ag_nope"})
    assert (status, answer["error"]) == (404, "agent_unknown")
    status, answer = await admin.call("POST", RUNS, {"flow": "hello", "inputs": [1]})
    assert status == 400
    status, answer = await admin.call("POST", RUNS, {"flow": "hello", "version": 7})
    assert (status, answer["error"]) == (404, "flow_unknown")


async def test_unacknowledged_runs_are_resent_after_reconnect(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    await admin.publish(HELLO_FLOW)
    paired = await pair(admin)
    client = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    await client.ready()
    run = await admin.ok("POST", RUNS, {"flow": "hello", "agent": paired.agent_id})
    await client.recv_type(StartRun)
    await client.close()  # lost before the run_ack
    again = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    await again.ready()
    resent = await again.recv()
    assert isinstance(resent, StartRun) and resent.run_id == run["run_id"]
    await again.send(RunAck(run_id=run["run_id"], accepted=True))
    await again.close()
    third = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    await third.ready()
    await third.send(Events(events=(ev(1, "element.entered", run["run_id"], {}),)))
    assert await third.recv() == Ack(seq=1)  # no start_run this time


async def test_cancel(admin: Admin, tenant: str, server: RunningServer) -> None:
    client, _ = await online(admin, server)
    run = await admin.ok("POST", RUNS, {"flow": "hello"})
    await client.recv_type(StartRun)
    status, _ = await admin.call("POST", f"{RUNS}/{run['run_id']}/cancel")
    assert status == 202
    assert await client.recv() == CancelRun(run_id=run["run_id"])
    await client.send(
        Events(events=(ev(1, "run.cancelled", run["run_id"], result(run["run_id"], "cancelled")),))
    )
    await client.recv_type(Ack)
    status, answer = await admin.call("POST", f"{RUNS}/{run['run_id']}/cancel")
    assert (status, answer["error"]) == (409, "run_ended")


async def test_runs_the_agent_started_itself_appear(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    client, agent_id = await online(admin, server)
    await client.send(
        Events(
            events=(
                ev(1, "run.started", "r_local1", result("r_local1", "running")),
                ev(
                    2,
                    "run.failed",
                    "r_local1",
                    result("r_local1", "failed", error={"element": "done", "message": "boom"}),
                ),
            )
        )
    )
    await client.recv_type(Ack)
    runs = (await admin.ok("GET", RUNS))["runs"]
    assert [(r["run_id"], r["status"], r["origin"], r["agent"]) for r in runs] == [
        ("r_local1", "failed", "agent", agent_id)
    ]
    assert runs[0]["result"]["error"]["message"] == "boom"


async def test_an_agent_cannot_rewrite_another_agents_run(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    _owner, _ = await online(admin, server)
    run = await admin.ok("POST", RUNS, {"flow": "hello"})
    other = await pair(admin, name="intruder")
    intruder = await LinkClient.connect(server.url, other.agent_id, other.key)
    await intruder.ready()
    await intruder.send(
        Events(events=(ev(1, "run.completed", run["run_id"], result(run["run_id"], "completed")),))
    )
    await intruder.recv_type(Ack)
    assert (await admin.ok("GET", f"{RUNS}/{run['run_id']}"))["status"] == "dispatched"
