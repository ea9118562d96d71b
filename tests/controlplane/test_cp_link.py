"""The websocket link: handshake, revocation, replacement, flow sync, events."""

from __future__ import annotations

import asyncio
from typing import Any

from cphelpers import HELLO_FLOW, Admin, LinkClient, pair

from agent.protocol.frames import (
    Ack,
    Activate,
    ErrorFrame,
    Event,
    Events,
    FlowAck,
    FlowPush,
    FlowRef,
    Inventory,
    Status,
)
from agent.protocol.signing import (
    flow_sha256,
    load_public_key,
    sign_auth,
    verify_activate,
    verify_flow_push,
)
from controlplane.app import RunningServer


def ev(seq: int, kind: str = "element.entered", run_id: str | None = None, **data: Any) -> Event:
    return Event(seq=seq, kind=kind, run_id=run_id, at="2026-01-01T00:00:00+00:00", data=data)


async def agent_status(admin: Admin, agent_id: str) -> dict[str, Any]:
    answer = await admin.ok("GET", f"/admin/v1/tenants/acme/agents/{agent_id}")
    assert isinstance(answer, dict)
    return answer


async def connected(admin: Admin, server: RunningServer) -> tuple[LinkClient, str]:
    paired = await pair(admin)
    client = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    await client.ready()
    return client, paired.agent_id


async def test_handshake_ok_then_online_then_offline(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    paired = await pair(admin)
    client = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    assert client.hello is not None and client.hello.region == "eu-1"
    welcome = await client.ready()
    assert (welcome.tenant, welcome.last_seq, welcome.heartbeat) == ("acme", 0, 20)
    state = await agent_status(admin, paired.agent_id)
    assert state["status"] == "online"
    assert state["facts"] == {"hostname": "host-1"}
    live = server.cp.hub.connections[paired.agent_id]
    await client.close()
    await asyncio.wait_for(live.finished.wait(), 10)
    assert (await agent_status(admin, paired.agent_id))["status"] == "offline"


async def test_bad_signature_is_refused_with_4401(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    paired = await pair(admin)
    other = await pair(admin, name="host-2")
    forged = sign_auth(other.key, nonce="AAAA", agent_id=paired.agent_id)
    client = await LinkClient.connect(server.url, paired.agent_id, paired.key, signature=forged)
    assert await client.close_code() == 4401
    # Signing the right nonce with another agent's key is refused too.
    client = await LinkClient.connect(server.url, paired.agent_id, other.key)
    assert await client.close_code() == 4401


async def test_unknown_agent_is_refused_with_4401(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    paired = await pair(admin)
    client = await LinkClient.connect(server.url, "ag_nobody", paired.key)
    assert await client.close_code() == 4401


async def test_garbage_during_handshake_closes_with_4400(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    import websockets

    async with websockets.connect(server.url.replace("http", "ws") + "/agent/v1/connect") as ws:
        await ws.recv()
        await ws.send('{"v":1,"type":"inventory","flows":[]}')
        try:
            await ws.recv()
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 4400


async def test_revoked_agent_cannot_connect(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    paired = await pair(admin)
    await admin.ok("POST", f"/admin/v1/tenants/acme/agents/{paired.agent_id}/revoke")
    client = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    assert await client.close_code() == 4403


async def test_revoke_closes_a_live_session_at_once(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    client, agent_id = await connected(admin, server)
    answer = await admin.ok("POST", f"/admin/v1/tenants/acme/agents/{agent_id}/revoke")
    assert answer["status"] == "revoked"
    assert await client.close_code() == 4403
    assert (await agent_status(admin, agent_id))["status"] == "revoked"


async def test_newer_connection_replaces_older_with_4409(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    paired = await pair(admin)
    first = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    await first.ready()
    second = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    await second.ready()
    assert await first.close_code() == 4409
    # The newer one still works.
    await second.send(Events(events=(ev(1),)))
    assert await second.recv_type(Ack) == Ack(seq=1)
    assert (await agent_status(admin, paired.agent_id))["status"] == "online"


async def test_shutdown_closes_links_with_1012(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    client, _ = await connected(admin, server)
    await server.stop()
    assert await client.close_code() == 1012


async def test_inventory_gets_missing_and_changed_flows(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    key = load_public_key(server.cp.info()["signing_key"])
    await admin.publish(HELLO_FLOW)
    await admin.publish({**HELLO_FLOW, "id": "other"})
    await admin.publish({**HELLO_FLOW, "id": "other", "name": "v2"})
    client, agent_id = await connected(admin, server)
    stored = await admin.ok("GET", "/admin/v1/tenants/acme/flows/hello/versions/1")
    # The agent has hello v1 already and an old "other".
    await client.send(
        Inventory(
            flows=(
                FlowRef(id="hello", version=1, sha256=flow_sha256(stored["definition"])),
                FlowRef(id="other", version=1, sha256="0" * 64),
            )
        )
    )
    push = await client.recv()
    assert isinstance(push, FlowPush)
    assert (push.id, push.version, push.activate, push.tenant) == ("other", 2, True, "acme")
    verify_flow_push(key, push)
    # Nothing else was sent: the next frame answers our events batch.
    await client.send(Events(events=(ev(1),)))
    assert await client.recv() == Ack(seq=1)
    await client.send(FlowAck(id="other", version=2, ok=True))
    await client.send(FlowAck(id="hello", version=1, ok=False, reason="signature"))
    await client.send(Events(events=(ev(2),)))
    await client.recv_type(Ack)
    acks = (await agent_status(admin, agent_id))["flow_acks"]
    assert [(a["id"], a["version"], a["ok"], a["reason"]) for a in acks] == [
        ("hello", 1, False, "signature"),
        ("other", 2, True, None),
    ]


async def test_inventory_after_a_rollback_sends_flow_then_activate(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    key = load_public_key(server.cp.info()["signing_key"])
    await admin.publish(HELLO_FLOW)
    await admin.publish(HELLO_FLOW)
    await admin.ok("POST", "/admin/v1/tenants/acme/flows/hello/activate", {"version": 1})
    client, _ = await connected(admin, server)
    await client.send(Inventory(flows=()))
    push = await client.recv()
    assert isinstance(push, FlowPush) and (push.version, push.activate) == (1, False)
    verify_flow_push(key, push)
    activate = await client.recv()
    assert isinstance(activate, Activate) and (activate.version, activate.serial) == (1, 1)
    verify_activate(key, activate)


async def test_publish_and_activate_are_pushed_to_connected_agents(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    key = load_public_key(server.cp.info()["signing_key"])
    client, _ = await connected(admin, server)
    await client.send(Inventory(flows=()))
    # Frames are handled in order: once this is acked the inventory was seen, so the
    # publish below reaches the agent by push alone.
    await client.send(Events(events=(ev(1),)))
    assert await client.recv() == Ack(seq=1)
    answer = await admin.publish({**HELLO_FLOW, "name": "pushed"})
    assert answer["pushed_to"] == 1
    push = await client.recv()
    assert isinstance(push, FlowPush)
    assert (push.version, push.activate, push.definition["name"]) == (1, True, "pushed")
    verify_flow_push(key, push)
    await admin.publish(HELLO_FLOW)
    assert (await client.recv_type(FlowPush)).version == 2
    await admin.ok("POST", "/admin/v1/tenants/acme/flows/hello/activate", {"version": 1})
    again = await client.recv()
    assert isinstance(again, FlowPush) and (again.version, again.activate) == (1, False)
    activate = await client.recv()
    assert isinstance(activate, Activate) and activate.serial == 1
    verify_activate(key, activate)


async def test_events_are_stored_once_in_order_and_gaps_ack_the_contiguous_seq(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    client, agent_id = await connected(admin, server)
    await client.send(Events(events=(ev(1), ev(2))))
    assert await client.recv() == Ack(seq=2)
    # A resend after a lost ack: duplicates are acked and ignored.
    await client.send(Events(events=(ev(1, note="dup"), ev(2, note="dup"))))
    assert await client.recv() == Ack(seq=2)
    # A gap: 4 without 3 is not stored; the ack says where to resend from.
    await client.send(Events(events=(ev(4),)))
    assert await client.recv() == Ack(seq=2)
    await client.send(Events(events=(ev(2), ev(3), ev(4), ev(6))))
    assert await client.recv() == Ack(seq=4)
    stored = (await admin.ok("GET", f"/admin/v1/tenants/acme/agents/{agent_id}/events"))["events"]
    assert [e["seq"] for e in stored] == [1, 2, 3, 4]
    assert all("note" not in e["data"] for e in stored)


async def test_welcome_carries_last_seq_after_reconnect(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    paired = await pair(admin)
    client = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    await client.ready()
    await client.send(Events(events=(ev(1), ev(2), ev(3))))
    assert await client.recv() == Ack(seq=3)
    again = await LinkClient.connect(server.url, paired.agent_id, paired.key)
    assert (await again.ready()).last_seq == 3


async def test_refused_frames_get_errors_then_4400(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    client, _ = await connected(admin, server)
    await client.send_text('{"v":1,"type":"launch"}')
    error = await client.recv()
    assert isinstance(error, ErrorFrame) and error.code == "unknown_type"
    # A frame only the control plane may send.
    await client.send_text('{"v":1,"type":"ack","seq":1}')
    error = await client.recv()
    assert isinstance(error, ErrorFrame) and error.code == "unexpected"
    await client.send_text('{"v":1,"type":"events","events":[{"seq":"1"}]}')
    error = await client.recv()
    assert isinstance(error, ErrorFrame) and error.code == "bad_field"
    # The link survives single refusals ...
    await client.send(Events(events=(ev(1),)))
    assert await client.recv_type(Ack) == Ack(seq=1)
    # ... but not more than twenty in a row.
    for _ in range(21):
        await client.send_text("{not json")
    assert await client.close_code() == 4400


async def test_status_frames_update_the_registry(
    admin: Admin, tenant: str, server: RunningServer
) -> None:
    client, agent_id = await connected(admin, server)
    await client.send(
        Status(
            agent_version="0.2.0",
            host={"hostname": "h", "os": "linux"},
            flows=(),
            runs={"running": 2},
            outbox_depth=5,
        )
    )
    await client.send(Events(events=(ev(1),)))
    await client.recv_type(Ack)
    state = await agent_status(admin, agent_id)
    assert state["version"] == "0.2.0"
    assert state["report"]["outbox_depth"] == 5
    assert state["report"]["runs"] == {"running": 2}
