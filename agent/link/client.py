"""The link: one outbound websocket to the control plane, kept up for good.

A short, dull pump around ``agent.protocol.Session``: the session decides
what is legal, this module only moves text between it and the socket.

One session: ``hello`` -> ``auth`` (the nonce signed with the agent's key)
-> ``welcome``; then ``inventory`` and ``status``, and four tasks until the
socket goes: the reader (flows, activations, runs, acks), the sender (outbox
batches from ``welcome.last_seq + 1``, a bounded window of unacknowledged
batches), the heartbeat (a ping every interval, the link is dead when no pong
comes within as long: a half-open link is found within two intervals) and
the status reporter.

Between sessions: capped, jittered backoff that resets after a healthy
session; once connected, never sooner than ``spread_delays`` (a restarting
control plane drops the whole fleet at once).  Close codes are
classified once (``classify_close``): 4401 and 4403 end the link for good
and are recorded as ``auth_refused``/``revoked`` so that ``flow-agent
status`` says so and nothing retries in a storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random as _random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Final, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from agent import __version__
from agent.errors import AgentError
from agent.flow.model import FlowInvalid, parse_flow
from agent.identity import Identity, host_facts
from agent.link.dispatch import Dispatcher
from agent.link.outbox import Outbox
from agent.link.state import LinkState, LinkStatus, write_link_status
from agent.link.sync import FlowSync
from agent.protocol.backoff import MAX_DELAY, Backoff
from agent.protocol.errors import RemoteProtocolError
from agent.protocol.frames import (
    Ack,
    Activate,
    Auth,
    CancelRun,
    ErrorFrame,
    Event,
    Events,
    FlowPush,
    Hello,
    Inventory,
    Message,
    SecretAck,
    SecretPush,
    StartRun,
    Status,
    Welcome,
    error_frame,
)
from agent.protocol.session import CloseCode, CloseInfo, Role, Session, classify_close
from agent.protocol.signing import sign_auth
from agent.store.sqlite import SqliteStore

log = logging.getLogger("flow_agent.link")

# One batch is read, sized and encoded in one step of the event loop: 500 events took
# 0.2 s on a busy machine (case 22 of the fault suite), 100 stay well under 0.1 s.
BATCH_EVENTS: Final = 100
WINDOW_BATCHES: Final = 16  # unacknowledged batches in flight
DEFAULT_HEARTBEAT: Final = 20.0
# RFC 6455 7.2.3 asks for a random first reconnect delay (websockets: 0-5 s); over 8 s a
# fleet comes back at an eighth of it per second on average, within 8 s of the restart.
RECONNECT_SPREAD: Final = 8.0

OpenWs = Callable[[str], Awaitable[ClientConnection]]


@dataclass(frozen=True, kw_only=True)
class LinkOptions:
    url: str  # ws(s)://.../agent/v1/connect
    heartbeat: float | None = None  # None: the control plane's value
    max_frame_bytes: int = 4 * 1024 * 1024
    handshake_timeout: float = 10.0
    status_interval: float = 30.0
    reconnect_spread: float = RECONNECT_SPREAD


def spread_delays(
    *, spread: float, cap: float = MAX_DELAY, random: Callable[[], float]
) -> Iterator[float]:
    """Least delays of the attempts after a lost session: a random phase, then spread, 2x, 4x...

    The phase is drawn once and later attempts keep it, so a fleet that lost
    its link at one instant stays spread over ``spread`` seconds however long
    the control plane is away (a fresh draw per attempt piles the agents
    refused meanwhile onto those that come on time).
    """
    yield random() * spread
    step = spread
    while True:
        yield step
        step = min(cap, step * 2)


class _Down(Exception):
    """The socket is gone (or must go); ``code`` is the close code received, if any."""

    def __init__(self, code: int | None, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


def _closed(exc: ConnectionClosed) -> _Down:
    rcvd = exc.rcvd
    if rcvd is None:
        return _Down(None, "the connection was lost")
    return _Down(rcvd.code, rcvd.reason or classify_close(rcvd.code).reason)


class Link:
    """Connects, runs sessions, reconnects; ``run()`` returns when stopped or terminal."""

    def __init__(
        self,
        *,
        identity: Identity,
        key: Ed25519PrivateKey,
        store: SqliteStore,
        outbox: Outbox,
        sync: FlowSync,
        dispatcher: Dispatcher,
        options: LinkOptions,
        open_ws: OpenWs,
        backoff: Backoff | None = None,
        mono: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
        random: Callable[[], float] = _random.random,
        on_secret: Callable[[SecretPush], SecretAck] | None = None,
    ) -> None:
        self.identity = identity
        self.on_secret = on_secret  # opens and stores sealed secrets (link.secret_inbox)
        self.key = key
        self.store = store
        self.outbox = outbox
        self.sync = sync
        self.dispatcher = dispatcher
        self.options = options
        self.open_ws = open_ws
        self.backoff = backoff or Backoff()
        self.mono = mono
        self.clock = clock
        self.random = random
        self.ready = asyncio.Event()  # set while a session is READY
        self.sessions = 0  # sessions that reached READY, for tests and status
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        outbox.on_append = self._wake.set
        self._state = LinkState.NEVER
        self._failures = 0

    # -- control ------------------------------------------------------------------

    def stop(self) -> None:
        """Stop for good: the session closes its socket (1001) and nothing reconnects."""
        self._stop.set()

    async def run(self) -> LinkState:
        spread: Iterator[float] | None = None  # after a session: this agent's reconnect phase
        while not self._stop.is_set():
            info, lasted = await self._attempt()
            if info is not None and info.terminal:
                state = (
                    LinkState.REVOKED if info.code == CloseCode.REVOKED else LinkState.AUTH_REFUSED
                )
                self._record(state, info.reason)
                log.error("link closed for good: %s", info.reason)
                return state
            if self._stop.is_set():
                break
            if lasted is not None:  # the whole fleet may have lost its link at this instant
                self.backoff.session_ended(lasted=lasted)
                spread = spread_delays(spread=self.options.reconnect_spread, random=self.random)
            delay = self.backoff.next_delay()
            if spread is not None:
                delay = max(delay, next(spread))
            log.debug("reconnecting in %.2f s", delay)
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass
        self._record(LinkState.DISCONNECTED, "the agent stopped")
        return self._state

    def _record(self, state: LinkState, detail: str | None, session_id: str | None = None) -> None:
        self._state = state
        try:
            write_link_status(
                self.store,
                LinkStatus(state=state, since=self.clock(), detail=detail, session_id=session_id),
            )
        except AgentError as exc:
            log.error("cannot record the link status: %s", exc)

    def _failed(self, why: str) -> None:
        self._failures += 1
        # One clear line when the control plane goes away, then quiet retries.
        if self._failures == 1:
            log.warning("cannot reach the control plane at %s: %s; retrying", self.options.url, why)
        else:
            log.debug("attempt %d failed: %s", self._failures, why)
        if self._state is not LinkState.DISCONNECTED or self._failures == 1:
            self._record(LinkState.DISCONNECTED, why)

    async def _connect(self) -> ClientConnection | None:
        """Open the socket, unless a stop comes first (a black-holed address takes long)."""
        connecting = asyncio.ensure_future(self.open_ws(self.options.url))
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not connecting.done():
                connecting.cancel()
            await asyncio.gather(connecting, stopping, return_exceptions=True)
        if connecting.cancelled():
            return None
        return connecting.result()

    async def _attempt(self) -> tuple[CloseInfo | None, float | None]:
        """One connection: (how it closed or None when it never opened, seconds READY)."""
        try:
            ws = await self._connect()
        except Exception as exc:
            # Refused, unreachable, TLS, HTTP status, a redirect, a malformed
            # HTTPS_PROXY: all retried with backoff, each said once.
            self._failed(_describe(exc))
            return None, None
        if ws is None:
            return None, None  # stopped while connecting
        session = Session(role=Role.AGENT, max_bytes=self.options.max_frame_bytes)
        runner = _SessionRunner(self, ws, session)
        try:
            await runner.run()
            down = _Down(None, "the session ended")
        except _Down as exc:
            down = exc
        except TimeoutError:
            down = _Down(None, "the control plane did not complete the handshake in time")
        except Exception as exc:  # a bug here must cost a reconnect, not the agent
            log.exception("link session failed")
            down = _Down(None, f"internal error: {_describe(exc)}")
        finally:
            self.ready.clear()
            await _close(ws)
        info = session.close(down.code)
        if info.terminal:
            return info, None
        if runner.ready_at is None:
            self._failed(down.why)
            return info, None
        if not self._stop.is_set():
            log.warning("link down: %s; reconnecting", down.why)
        self._failures = 0
        self._record(LinkState.DISCONNECTED, down.why)
        return info, self.mono() - runner.ready_at


class _SessionRunner:
    """One websocket session, from ``hello`` to the socket closing."""

    def __init__(self, link: Link, ws: ClientConnection, session: Session) -> None:
        self.link = link
        self.ws = ws
        self.session = session
        self.ready_at: float | None = None
        self._lock = asyncio.Lock()
        self._sent_upto = 0
        self._inflight: deque[int] = deque()
        self._stale_acks = 0

    async def send(self, msg: Message) -> None:
        text = self.session.send(msg)
        async with self._lock:
            try:
                await self.ws.send(text)
            except ConnectionClosed as exc:
                raise _closed(exc) from None

    async def recv(self) -> str | bytes:
        try:
            return await self.ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def _handshake_frame(self) -> Message:
        while True:
            text = await self.recv()
            try:
                msg = self.session.receive(text)
            except RemoteProtocolError as exc:
                log.warning("refused handshake frame from the control plane: %s", exc.message)
                await self.ws.close(CloseCode.PROTOCOL_ERROR, exc.code)
                raise _Down(CloseCode.PROTOCOL_ERROR, f"bad handshake: {exc.message}") from None
            if isinstance(msg, ErrorFrame):
                log.warning("control plane refused a frame: %s %s", msg.code, msg.message)
                continue
            return msg

    async def run(self) -> None:
        link = self.link
        identity = link.identity
        if link._stop.is_set():
            raise _Down(CloseCode.GOING_AWAY, "the agent is stopping")
        async with asyncio.timeout(link.options.handshake_timeout):
            hello = await self._handshake_frame()
            assert isinstance(hello, Hello)  # the session admits nothing else first
            signature = sign_auth(link.key, nonce=hello.nonce, agent_id=identity.agent_id)
            await self.send(
                Auth(
                    agent_id=identity.agent_id,
                    signature=signature,
                    agent_version=__version__,
                    facts=host_facts(),
                )
            )
            welcome = await self._handshake_frame()
            assert isinstance(welcome, Welcome)
        if welcome.tenant != identity.tenant:
            why = (
                f"the control plane placed this agent in tenant {welcome.tenant!r}, but it was"
                f" paired with {identity.tenant!r}; pair again"
            )
            log.error("%s", why)
            await self.ws.close(CloseCode.PROTOCOL_ERROR, "wrong tenant")
            raise _Down(CloseCode.AUTH_REFUSED, why)
        self.ready_at = link.mono()
        link.sessions += 1
        link._record(LinkState.CONNECTED, None, welcome.session_id)
        log.info("connected to %s (session %s)", link.options.url, welcome.session_id)
        self._resume_from(welcome.last_seq)
        heartbeat = link.options.heartbeat or welcome.heartbeat or DEFAULT_HEARTBEAT
        await self.send(Inventory(flows=link.sync.inventory()))
        await self.send(self.status())
        link.ready.set()
        down: _Down | None = None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._reader())
                group.create_task(self._sender())
                group.create_task(self._heartbeat(heartbeat))
                group.create_task(self._reporter())
                group.create_task(self._until_stopped())
        except* _Down as group_error:
            first = group_error.exceptions[0]
            assert isinstance(first, _Down)
            down = first
        if down is not None:
            raise down

    async def _until_stopped(self) -> None:
        await self.link._stop.wait()
        await _close(self.ws)
        raise _Down(CloseCode.GOING_AWAY, "the agent is stopping")

    def status(self) -> Status:
        link = self.link
        return Status(
            agent_version=__version__,
            host=host_facts(),
            flows=link.sync.inventory(),
            runs=link.store.count_runs_by_status(),
            outbox_depth=link.outbox.depth(),
        )

    # -- outbox delivery ------------------------------------------------------------

    def _resume_from(self, last_seq: int) -> None:
        outbox = self.link.outbox
        outbox.ack(last_seq)
        if last_seq > outbox.last_seq():
            # The control plane has numbers we never gave out (our state was
            # restored from an older copy): new events must not look like resends.
            log.warning(
                "the control plane has events up to %d, this agent numbered up to %d;"
                " continuing from %d",
                last_seq,
                outbox.last_seq(),
                last_seq,
            )
            outbox.skip_to(last_seq)
        first = outbox.first_seq()
        if first is not None and first > last_seq + 1:
            log.error(
                "the control plane lost events %d..%d that it had acknowledged;"
                " they cannot be sent again",
                last_seq + 1,
                first - 1,
            )
        self._sent_upto = last_seq
        self._inflight.clear()
        self._stale_acks = 0

    def _on_ack(self, seq: int) -> None:
        self.link.outbox.ack(seq)
        if self._stale_acks:
            self._stale_acks -= 1
        elif self._inflight:
            expected = self._inflight.popleft()
            if seq < expected:
                # A gap at the control plane: it kept events up to seq only.  The
                # acks of batches already in flight carry no news; resend from seq.
                log.warning("control plane acknowledged up to %d of %d; resending", seq, expected)
                self._stale_acks = len(self._inflight)
                self._inflight.clear()
                self._sent_upto = seq
        self.link._wake.set()

    def _batch(self) -> list[Event]:
        budget = self.link.options.max_frame_bytes // 2
        batch: list[Event] = []
        for event in self.link.outbox.pending(after=self._sent_upto, limit=BATCH_EVENTS):
            size = len(json.dumps(event.data, ensure_ascii=False)) + 200
            if batch and size > budget:
                break
            budget -= size
            batch.append(event)
        return batch

    async def _sender(self) -> None:
        wake = self.link._wake
        while True:
            if len(self._inflight) < WINDOW_BATCHES:
                batch = self._batch()
                if batch:
                    await self.send(Events(events=tuple(batch)))
                    self._sent_upto = batch[-1].seq
                    self._inflight.append(self._sent_upto)
                    continue
            wake.clear()
            await wake.wait()

    # -- frames from the control plane ------------------------------------------------

    async def _reader(self) -> None:
        while True:
            text = await self.recv()
            try:
                msg = self.session.receive(text)
            except RemoteProtocolError as exc:
                log.warning("refused a frame from the control plane: %s", exc.message)
                if exc.close_code is not None:
                    await self.ws.close(exc.close_code, exc.code)
                    raise _Down(exc.close_code, "too many refused frames") from None
                await self.send(error_frame(exc))
                continue
            try:
                await self._handle(msg)
            except _Down:
                raise
            except AgentError as exc:
                # A store failure (disk full, I/O): refuse this frame, keep the link.
                log.error("cannot handle %s frame: %s", msg.TYPE, exc)
                await self.send(ErrorFrame(code="agent_error", message=exc.message[:500]))

    async def _handle(self, msg: Message) -> None:
        link = self.link
        match msg:
            case FlowPush():
                # Compile it off the event loop (a large flow takes a second or more);
                # the sync then finds it compiled (parse_flow keeps recent flows).
                with contextlib.suppress(FlowInvalid):
                    await asyncio.to_thread(parse_flow, msg.definition)
                await self.send(link.sync.on_flow(msg))
            case Activate():
                await self.send(link.sync.on_activate(msg))
            case StartRun():
                await self.send(await link.dispatcher.start_run(msg))
            case CancelRun():
                await link.dispatcher.cancel_run(msg)
            case SecretPush():
                if link.on_secret is None:
                    await self.send(SecretAck(name=msg.name, ok=False, reason="store_failed"))
                else:
                    await self.send(link.on_secret(msg))
            case Ack(seq=seq):
                self._on_ack(seq)
            case ErrorFrame(code=code, message=message):
                log.warning("control plane refused a frame: %s %s", code, message)
            case _:  # pragma: no cover - the session admits nothing else
                log.warning("unexpected %s frame ignored", msg.TYPE)

    # -- heartbeat and status -----------------------------------------------------------

    async def _heartbeat(self, interval: float) -> None:
        """Ping every ``interval``; the link is dead when a ping goes unanswered for as long
        and nothing at all arrived meanwhile.

        Bytes still arriving mean the link is alive and only slow: the pong sits
        behind a large frame (a flow download over a thin link).  Without this a
        frame longer than ``interval`` to receive cost a reconnect, after which
        the control plane sent it again, for ever.  While waiting the agent
        keeps pinging every half interval, so the control plane hears from it.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            sent = loop.time()
            pong = await self._ping(interval)
            while True:
                done, _ = await asyncio.wait({pong}, timeout=interval / 2)
                if done:
                    if (error := pong.exception()) is not None:
                        if isinstance(error, ConnectionClosed):
                            raise _closed(error) from None
                        raise _Down(None, f"the ping failed: {error}") from None
                    break
                now = loop.time()
                received = getattr(self.ws, "last_received", None)
                busy = isinstance(received, float) and now - received < interval
                if now - sent >= interval and not busy:
                    log.warning(
                        "no pong from the control plane within %g s: the link is dead", interval
                    )
                    self.ws.transport.abort()
                    raise _Down(None, f"no pong within {interval:g} s")
                if busy:
                    await self._ping(interval)

    async def _ping(self, interval: float) -> asyncio.Future[float]:
        try:
            # Sending waits while the socket's buffer is full: a link that takes
            # nothing for a whole interval is as dead as one that answers nothing.
            async with asyncio.timeout(interval):
                # websockets types it as an Awaitable; it is an asyncio.Future.
                waiter = cast("asyncio.Future[float]", await self.ws.ping())
        except TimeoutError:
            log.warning("a ping could not be sent within %g s: the link is dead", interval)
            self.ws.transport.abort()
            raise _Down(None, f"no ping sent within {interval:g} s") from None
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        # A pong also answers every earlier ping; waiters left over at close are read here.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        return waiter

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.link.options.status_interval)
            await self.send(self.status())


async def _close(ws: ClientConnection) -> None:
    try:
        async with asyncio.timeout(2):
            await ws.close(CloseCode.GOING_AWAY, "agent closing")
    except (TimeoutError, OSError, ConnectionClosed):
        pass
    finally:
        ws.transport.abort()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


__all__ = ["DEFAULT_HEARTBEAT", "RECONNECT_SPREAD", "Link", "LinkOptions", "spread_delays"]
