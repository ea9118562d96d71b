"""Flow sync over the real link: signatures, tenants, versions, rollbacks, validation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.link.sync import FlowSync
from agent.protocol.frames import Activate, FlowPush, Message
from agent.protocol.signing import flow_sha256, sign_activation, sign_flow
from controlplane.hub import AgentConnection

from .linkhelpers import HELLO, PAGE, AgentUnderTest, Cp, until, within


def _active(sync: FlowSync, flow_id: str) -> int | None:
    found = [ref.version for ref in sync.inventory() if ref.id == flow_id]
    return found[0] if found else None


def _acks(cp: Cp, agent_id: str, flow_id: str) -> dict[int, dict[str, Any]]:
    return {a["version"]: a for a in cp.cp.store.flow_acks(agent_id) if a["id"] == flow_id}


def _rejections(cp: Cp, agent_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in cp.events(agent_id) if e["kind"] == "flow.rejected"]


def _conn(cp: Cp, agent: AgentUnderTest) -> AgentConnection:
    assert agent.identity is not None
    conn = cp.cp.hub.connection(agent.identity.agent_id)
    assert conn is not None
    return conn


def _greeting(text: str) -> dict[str, Any]:
    doc = {**HELLO, "elements": {**HELLO["elements"]}}
    doc["elements"]["greet"] = {
        "type": "operator",
        "operations": [{"set": "greeting", "to": text}],
        "next": "done",
    }
    return doc


def _signed(cp: Cp, doc: dict[str, Any], *, tenant: str, version: int) -> FlowPush:
    definition = {**doc, "version": version}
    return FlowPush(
        tenant=tenant,
        id=doc["id"],
        version=version,
        definition=definition,
        sha256=flow_sha256(definition),
        signature=sign_flow(
            cp.cp.signing_key,
            tenant=tenant,
            flow_id=doc["id"],
            version=version,
            definition=definition,
        ),
        activate=True,
    )


async def _push(cp: Cp, agent: AgentUnderTest, frame: Message) -> None:
    assert await _conn(cp, agent).send(frame)


async def _rejected(cp: Cp, agent: AgentUnderTest, count: int) -> list[dict[str, Any]]:
    assert agent.identity is not None
    agent_id = agent.identity.agent_id
    await until(lambda: len(_rejections(cp, agent_id)) >= count, "a flow.rejected event")
    return _rejections(cp, agent_id)


async def test_publish_reaches_the_agent_and_is_acknowledged(cp: Cp, agent: AgentUnderTest) -> None:
    a = await agent.start()
    await cp.publish(HELLO)
    await until(lambda: _active(a.sync, "hello") == 1, "hello v1 active")
    assert agent.identity is not None
    agent_id = agent.identity.agent_id
    await until(lambda: 1 in _acks(cp, agent_id, "hello"), "the flow_ack")
    assert _acks(cp, agent_id, "hello")[1]["ok"] is True
    stored = a.store.get_flow("hello", 1)
    assert stored is not None and stored.signature is not None


async def test_a_tampered_signature_is_rejected_and_the_good_version_stays(
    cp: Cp, agent: AgentUnderTest
) -> None:
    a = await agent.start()
    await cp.publish(HELLO)
    await until(lambda: _active(a.sync, "hello") == 1, "hello v1 active")
    good = _signed(cp, HELLO, tenant="acme", version=2)
    tampered = replace(good, definition={**good.definition, "name": "evil"})
    tampered = replace(tampered, sha256=flow_sha256(tampered.definition))
    await _push(cp, agent, tampered)
    (rejection,) = await _rejected(cp, agent, 1)
    assert rejection["version"] == 2 and "signature" in rejection["reason"]
    assert _active(a.sync, "hello") == 1
    assert a.store.get_flow("hello", 2) is None


async def test_another_tenants_flow_is_rejected(cp: Cp, agent: AgentUnderTest) -> None:
    a = await agent.start()
    await cp.tenant("globex")
    await _push(cp, agent, _signed(cp, HELLO, tenant="globex", version=1))
    (rejection,) = await _rejected(cp, agent, 1)
    assert "tenant 'globex'" in rejection["reason"]
    assert _active(a.sync, "hello") is None


async def test_an_older_version_replayed_is_ignored(cp: Cp, agent: AgentUnderTest) -> None:
    a = await agent.start()
    await cp.publish(_greeting("one"))
    await cp.publish(_greeting("two"))
    await until(lambda: _active(a.sync, "hello") == 2, "hello v2 active")
    # A genuine, correctly signed v1 frame, sent again: a replay.
    await _push(cp, agent, _signed(cp, _greeting("one"), tenant="acme", version=1))
    (rejection,) = await _rejected(cp, agent, 1)
    assert "not newer than version 2" in rejection["reason"]
    assert _active(a.sync, "hello") == 2


async def test_rollback_needs_a_signed_activation_with_a_higher_serial(
    cp: Cp, agent: AgentUnderTest
) -> None:
    a = await agent.start()
    await cp.publish(_greeting("one"))
    await cp.publish(_greeting("two"))
    await until(lambda: _active(a.sync, "hello") == 2, "hello v2 active")
    await cp.cp.activate("acme", "hello", 1)
    await until(lambda: _active(a.sync, "hello") == 1, "the rollback to v1")
    await cp.cp.activate("acme", "hello", 2)
    await until(lambda: _active(a.sync, "hello") == 2, "forward again to v2")
    key = cp.cp.signing_key
    old = Activate(
        tenant="acme",
        id="hello",
        version=1,
        serial=1,
        signature=sign_activation(key, tenant="acme", flow_id="hello", version=1, serial=1),
    )
    await _push(cp, agent, old)
    (rejection,) = await _rejected(cp, agent, 1)
    assert "serial 1 is not newer than 2" in rejection["reason"]
    assert _active(a.sync, "hello") == 2
    forged = replace(old, serial=9)  # signature over serial 1 does not cover 9
    await _push(cp, agent, forged)
    rejections = await _rejected(cp, agent, 2)
    assert "activation refused" in rejections[-1]["reason"]
    assert _active(a.sync, "hello") == 2


async def test_an_invalid_flow_is_rejected_with_its_issues(cp: Cp, agent: AgentUnderTest) -> None:
    a = await agent.start()
    await cp.publish(HELLO)
    await until(lambda: _active(a.sync, "hello") == 1, "hello v1 active")
    broken = {**HELLO, "start": "nowhere"}
    await _push(cp, agent, _signed(cp, broken, tenant="acme", version=2))
    (rejection,) = await _rejected(cp, agent, 1)
    assert rejection["reason"].startswith("invalid flow/v1:") and "nowhere" in rejection["reason"]
    assert _active(a.sync, "hello") == 1
    assert agent.identity is not None
    ack = await within(_wait_ack(cp, agent.identity.agent_id, 2), "the refusal's ack")
    assert ack["ok"] is False and ack["reason"] == rejection["reason"]


async def _wait_ack(cp: Cp, agent_id: str, version: int) -> dict[str, Any]:
    await until(lambda: version in _acks(cp, agent_id, "hello"), "a flow_ack")
    return _acks(cp, agent_id, "hello")[version]


async def test_a_run_keeps_the_version_it_started_on(cp: Cp, agent: AgentUnderTest) -> None:
    a = await agent.start()
    await cp.publish(PAGE)
    await until(lambda: _active(a.sync, "approve") == 1, "approve v1 active")
    run, _ = await cp.cp.dispatch_run("acme", flow="approve")
    await until(lambda: a.store.get_run(run.id) is not None, "the run to start")
    changed = {
        **PAGE,
        "elements": {**PAGE["elements"], "done": {"type": "end", "status": "failed"}},
    }
    await cp.publish(changed)
    await until(lambda: _active(a.sync, "approve") == 2, "approve v2 active")
    from agent.flow.commands import Answer

    result = await a.runner.resume(run.id, answer=Answer(outcome="ok", fields={}, state_token=None))
    assert (result["version"], result["status"]) == (1, "completed")


async def test_flows_published_while_offline_arrive_on_reconnect(
    cp: Cp, agent: AgentUnderTest
) -> None:
    a = await agent.start()
    await cp.publish(_greeting("one"))
    await until(lambda: _active(a.sync, "hello") == 1, "hello v1 active")
    await cp.stop()
    await until(lambda: not a.link.ready.is_set(), "the link to notice")
    await cp.start()
    await cp.publish(_greeting("two"))
    await cp.publish(PAGE)
    await until(lambda: _active(a.sync, "hello") == 2, "hello v2 after reconnect")
    await until(lambda: _active(a.sync, "approve") == 1, "approve v1 after reconnect")
