"""The agent link: ``GET /agent/v1/connect`` and the registry of live sessions.

Each websocket is driven through ``agent.protocol.session.Session`` (the
control-plane role): hello/auth/welcome, then inventory-driven flow sync,
flow and run acknowledgements, event ingestion with acks, status reports.
A newer connection of the same agent replaces the older one (4409);
revocation closes the live socket with 4403; shutdown closes with 1012.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime

from aiohttp import WSMsgType, web

from agent.protocol.errors import KeyInvalid, RemoteProtocolError, SignatureInvalid
from agent.protocol.frames import (
    Ack,
    Activate,
    Auth,
    ErrorFrame,
    Events,
    FlowAck,
    FlowPush,
    FlowRef,
    Hello,
    Inventory,
    Message,
    RunAck,
    SecretAck,
    SecretPush,
    StartRun,
    Status,
    Welcome,
    error_frame,
)
from agent.protocol.session import CloseCode, Role, Session, SessionState
from agent.protocol.signing import load_public_key, new_nonce, verify_auth
from controlplane.db import Database
from controlplane.errors import Conflict
from controlplane.settings import Settings
from controlplane.store import ActiveFlow, AgentRecord, RunRecord, Store

log = logging.getLogger("controlplane.link")


class AgentConnection:
    """One authenticated websocket; ``send`` is safe from any task."""

    def __init__(self, *, agent: AgentRecord, ws: web.WebSocketResponse, session: Session) -> None:
        self.agent = agent
        self.ws = ws
        self.session = session
        self.session_id = "s_" + secrets.token_hex(8)
        self._lock = asyncio.Lock()
        # Set once the handler has recorded the disconnect: the registry is settled.
        self.finished = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.session.state is SessionState.READY and not self.ws.closed

    async def send(self, msg: Message) -> bool:
        """Send one frame; False when the socket is already gone."""
        async with self._lock:
            if self.ws.closed or self.session.state is SessionState.CLOSED:
                return False
            text = self.session.send(msg)
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return False
            return True

    async def close(self, code: int, reason: str) -> None:
        if self.session.state is not SessionState.CLOSED:
            self.session.close(code)
        await self.ws.close(code=code, message=reason.encode()[:120])


def flow_frames(active: ActiveFlow) -> list[Message]:
    """The frames that make ``active`` the agent's active version (see docs/protocol.md)."""
    flow = active.flow
    rollback = active.chosen_by == "activate" and active.activation_signature is not None
    frames: list[Message] = [
        FlowPush(
            tenant=flow.tenant,
            id=flow.flow_id,
            version=flow.version,
            definition=flow.definition,
            sha256=flow.sha256,
            signature=flow.signature,
            activate=not rollback,
        )
    ]
    if rollback:
        assert active.activation_signature is not None
        frames.append(
            Activate(
                tenant=flow.tenant,
                id=flow.flow_id,
                version=flow.version,
                serial=active.serial,
                signature=active.activation_signature,
            )
        )
    return frames


def start_run_frame(run: RunRecord) -> StartRun:
    return StartRun(run_id=run.id, flow=run.flow, inputs=run.inputs, version=run.version)


class Hub:
    def __init__(
        self,
        *,
        db: Database,
        store: Store,
        settings: Settings,
        on_run_change: Callable[[], None],
    ) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.on_run_change = on_run_change
        self.connections: dict[str, AgentConnection] = {}
        # (agent id, secret name) -> the agent's secret_ack, awaited by send_secret.
        self._secret_acks: dict[tuple[str, str], asyncio.Future[SecretAck]] = {}

    def tenant_connections(self, tenant: str) -> list[AgentConnection]:
        return [c for c in self.connections.values() if c.agent.tenant == tenant and c.ready]

    def connection(self, agent_id: str) -> AgentConnection | None:
        conn = self.connections.get(agent_id)
        return conn if conn is not None and conn.ready else None

    async def push(self, tenant: str, frames: list[Message]) -> int:
        """Send ``frames`` to every ready connection of ``tenant``; returns how many got them."""
        reached = 0
        for conn in self.tenant_connections(tenant):
            ok = True
            for frame in frames:
                ok = await conn.send(frame) and ok
            reached += ok
        return reached

    async def send_secret(
        self, conn: AgentConnection, frame: SecretPush, *, timeout: float
    ) -> SecretAck | None:
        """Send a sealed secret and wait for its ``secret_ack``; None when none came."""
        key = (conn.agent.id, frame.name)
        if key in self._secret_acks:
            raise Conflict(
                f"secret {frame.name!r} is already being sent to agent {conn.agent.id!r}",
                code="secret_in_flight",
                hint="wait for that request to finish, then try again",
            )
        waiter: asyncio.Future[SecretAck] = asyncio.get_running_loop().create_future()
        self._secret_acks[key] = waiter
        try:
            if not await conn.send(frame):
                return None
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            return None
        finally:
            del self._secret_acks[key]

    async def disconnect(self, agent_id: str, *, code: int, reason: str) -> bool:
        conn = self.connections.get(agent_id)
        if conn is None:
            return False
        await conn.close(code, reason)
        return True

    async def close_all(self, *, code: int = CloseCode.SERVER_RESTART) -> None:
        conns = list(self.connections.values())
        await asyncio.gather(
            *(c.close(code, "control plane restarting") for c in conns), return_exceptions=True
        )

    # -- one websocket --------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Room above the protocol limit so an oversized frame gets an ``error``, not a 1009.
        ws = web.WebSocketResponse(
            heartbeat=self.settings.heartbeat, max_msg_size=2 * self.settings.max_frame_bytes
        )
        await ws.prepare(request)
        session = Session(role=Role.CONTROL_PLANE, max_bytes=self.settings.max_frame_bytes)
        conn: AgentConnection | None = None
        try:
            conn = await self._handshake(ws, session)
            if conn is not None:
                await self._serve(conn)
        finally:
            if conn is not None and self.connections.get(conn.agent.id) is conn:
                del self.connections[conn.agent.id]
                await self.db.run(lambda: self.store.agent_disconnected(conn.agent.id))
                log.info("agent %s disconnected (code %s)", conn.agent.id, ws.close_code)
            if not ws.closed:
                await ws.close()
            if conn is not None:
                conn.finished.set()
        return ws

    async def _refuse(
        self, ws: web.WebSocketResponse, session: Session, code: int, why: str
    ) -> None:
        log.warning("link refused with %d: %s", code, why)
        session.close(code)
        await ws.close(code=code, message=why.encode()[:120])

    async def _handshake(
        self, ws: web.WebSocketResponse, session: Session
    ) -> AgentConnection | None:
        nonce = new_nonce()
        hello = Hello(
            nonce=nonce,
            server_time=datetime.fromtimestamp(self.store.clock(), UTC).isoformat(
                timespec="seconds"
            ),
            region=self.settings.region,
            heartbeat=self.settings.heartbeat,
        )
        await ws.send_str(session.send(hello))
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                auth = await self._receive_auth(ws, session)
        except TimeoutError:
            await self._refuse(ws, session, CloseCode.PROTOCOL_ERROR, "no auth in time")
            return None
        if auth is None:
            return None
        agent = await self.db.run(lambda: self.store.get_agent(auth.agent_id))
        if agent is None:
            await self._refuse(ws, session, CloseCode.AUTH_REFUSED, "unknown agent")
            return None
        try:
            key = load_public_key(agent.public_key)
            verify_auth(key, nonce=nonce, agent_id=agent.id, signature=auth.signature)
        except (SignatureInvalid, KeyInvalid):
            await self._refuse(ws, session, CloseCode.AUTH_REFUSED, "bad signature")
            return None
        if agent.revoked:
            await self._refuse(ws, session, CloseCode.REVOKED, "agent revoked")
            return None
        conn = AgentConnection(agent=agent, ws=ws, session=session)
        old = self.connections.get(agent.id)
        self.connections[agent.id] = conn
        if old is not None:
            await old.close(CloseCode.REPLACED, "replaced by a newer connection")
        await self.db.run(
            lambda: self.store.agent_connected(
                agent.id, version=auth.agent_version, facts=auth.facts
            )
        )
        fresh = await self.db.run(lambda: self.store.get_agent(agent.id))
        if fresh is None or fresh.revoked:
            # Revoked between the lookup and the registration: revoke saw no socket to close.
            await conn.close(CloseCode.REVOKED, "agent revoked")
            return conn
        conn.agent = fresh
        welcome = Welcome(
            session_id=conn.session_id,
            tenant=fresh.tenant,
            heartbeat=self.settings.heartbeat,
            last_seq=fresh.last_seq,
        )
        await conn.send(welcome)
        log.info("agent %s (%s) connected, session %s", fresh.id, fresh.tenant, conn.session_id)
        for run in await self.db.run(lambda: self.store.unacked_runs(fresh.id)):
            await conn.send(start_run_frame(run))
        return conn

    async def _receive_auth(self, ws: web.WebSocketResponse, session: Session) -> Auth | None:
        while True:
            msg = await ws.receive()
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                return None
            try:
                frame = session.receive(msg.data)
            except RemoteProtocolError as exc:
                await self._refuse(ws, session, CloseCode.PROTOCOL_ERROR, exc.code)
                return None
            if isinstance(frame, Auth):
                return frame
            log.warning("error frame from an agent during the handshake: %s", frame)

    async def _serve(self, conn: AgentConnection) -> None:
        async for msg in conn.ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            try:
                frame = conn.session.receive(msg.data)
            except RemoteProtocolError as exc:
                log.warning("agent %s sent a refused frame: %s", conn.agent.id, exc.message)
                if exc.close_code is not None:
                    await conn.close(exc.close_code, "too many refused frames")
                    break
                await conn.send(error_frame(exc))
                continue
            await self._dispatch(conn, frame)

    async def _dispatch(self, conn: AgentConnection, frame: Message) -> None:
        agent = conn.agent
        match frame:
            case Inventory(flows=flows):
                await self._sync(conn, flows)
            case FlowAck(id=flow_id, version=version, ok=ok, reason=reason):
                await self.db.run(
                    lambda: self.store.record_flow_ack(
                        agent.id, flow_id=flow_id, version=version, ok=ok, reason=reason
                    )
                )
                if not ok:
                    log.warning("agent %s rejected %s v%d: %s", agent.id, flow_id, version, reason)
            case RunAck(run_id=run_id, accepted=accepted, reason=reason, message=message):
                await self.db.run(
                    lambda: self.store.run_acked(
                        agent.id, run_id=run_id, accepted=accepted, reason=reason, message=message
                    )
                )
                self.on_run_change()
            case Events(events=events):
                last, touched = await self.db.run(lambda: self.store.ingest_events(agent, events))
                await conn.send(Ack(seq=last))
                if touched:
                    self.on_run_change()
            case Status():
                report = asdict(frame)
                await self.db.run(
                    lambda: self.store.agent_status(
                        agent.id, version=frame.agent_version, report=report
                    )
                )
            case SecretAck(name=name, ok=ok, reason=reason):
                # The name only: the value never reached this process in clear.
                if not ok:
                    log.warning("agent %s refused secret %s: %s", agent.id, name, reason)
                waiter = self._secret_acks.get((agent.id, name))
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame)
            case ErrorFrame(code=code, message=message):
                log.warning("agent %s refused a frame: %s %s", agent.id, code, message)
            case _:  # pragma: no cover - the session lets nothing else through
                log.error("unhandled frame %s", frame.TYPE)

    async def _sync(self, conn: AgentConnection, flows: tuple[FlowRef, ...]) -> None:
        have = {f.id: (f.version, f.sha256) for f in flows}
        actives = await self.db.run(lambda: self.store.active_flows(conn.agent.tenant))
        for active in actives:
            if have.get(active.flow.flow_id) != (active.flow.version, active.flow.sha256):
                for frame in flow_frames(active):
                    await conn.send(frame)
