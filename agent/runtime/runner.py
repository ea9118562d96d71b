"""The runner: executes engine commands against the store and connectors.

For every engine step the runner commits the new state (with whatever the
observer adds, e.g. outbox events, in the same transaction) *before* it
executes the step's commands.  A killed process therefore resumes from the
last commit: a connector call is repeated with the same idempotency key, a
child run is found again, a timer is re-armed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets as pysecrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from agent.errors import AgentError, OperationError
from agent.flow.commands import (
    Answer,
    CallConnector,
    Cancel,
    ChildFinished,
    ConnectorDone,
    ConnectorResult,
    Event,
    StartChild,
    TimerFired,
    WaitUntil,
)
from agent.flow.engine import AnswerRefused, Engine, EngineMisuse, InputInvalid, Step, Visit
from agent.flow.state import RunState
from agent.store.base import RunRecord, Store

from .catalog import Catalog

log = logging.getLogger("flow_agent.runner")

MAX_DEPTH = 16  # subflows nested deeper than this fault (a recursion bomb)
_ULID = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_run_id(clock: Callable[[], float] = time.time) -> str:
    """``r_`` and a ULID: sortable by creation time, 80 random bits."""
    value = (int(clock() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ULID[value & 31])
        value >>= 5
    return "r_" + "".join(reversed(chars))


class ConnectorSource(Protocol):
    def get(self, connector_type: str) -> Any: ...


class Observer(Protocol):
    """Told about every committed step, inside its transaction."""

    def committed(
        self,
        *,
        result: dict[str, Any],
        previous: str | None,
        visits: tuple[Visit, ...],
        parent_id: str | None,
    ) -> None: ...


class NullObserver:
    def committed(
        self,
        *,
        result: dict[str, Any],
        previous: str | None,
        visits: tuple[Visit, ...],
        parent_id: str | None,
    ) -> None:
        return None


class RunNotFound(OperationError):
    pass


class RunDamaged(OperationError):
    """A run's stored state cannot be read back: trying again cannot help."""


class _RunLock:
    """The lock of one run tree, dropped from its table when nobody holds or awaits it.

    Kept forever, the table would grow by an entry for every run ever started
    (state lives on disk; memory must not grow with waiting runs).
    """

    __slots__ = ("_lock", "_root", "_table", "_users")

    def __init__(self, table: dict[str, _RunLock], root: str) -> None:
        self._lock = asyncio.Lock()
        self._table = table
        self._root = root
        self._users = 0

    async def __aenter__(self) -> None:
        # Counted before the first await: the entry cannot be dropped between
        # ``Runner._lock`` handing it out and this coroutine waiting on it.
        self._users += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        self._users -= 1
        if self._users == 0 and self._table.get(self._root) is self:
            del self._table[self._root]


class Runner:
    def __init__(
        self,
        *,
        store: Store,
        catalog: Catalog,
        connectors: ConnectorSource,
        secrets: Mapping[str, str] | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        inline_wait: float = 0.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.connectors = connectors
        # Not `secrets or {}`: an empty secret store is falsy, and fills up later.
        self.secrets: Mapping[str, str] = {} if secrets is None else secrets
        self.observer: Observer = observer or NullObserver()
        self.clock = clock
        self.inline_wait = inline_wait  # timers due within this many seconds are slept through
        self.sleep = sleep
        self._locks: dict[str, _RunLock] = {}

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # -- public operations ----------------------------------------------------------
    async def start(
        self,
        flow_id: str,
        inputs: Mapping[str, Any],
        *,
        run_id: str | None = None,
        engine: Engine | None = None,
    ) -> dict[str, Any]:
        """Start a run and drive it until it ends or waits.  Returns its result.

        Raises ``InputInvalid`` (nothing stored) when the inputs do not fit.
        """
        engine = engine or self.catalog.active(flow_id)
        if engine is None:
            raise OperationError(f"flow '{flow_id}' is not known to this agent")
        run_id = run_id or new_run_id(self.clock)
        step = engine.start(run_id, inputs, now=self.now(), secrets=self.secrets)
        async with self._lock(run_id):
            self._commit(engine, step, previous=None)
            state = await self._drive(engine, step)
        return await self._result(engine, state)

    async def resume(self, run_id: str, *, answer: Answer | None = None) -> dict[str, Any]:
        """Answer the page a run waits on, or continue an interrupted/timed run.

        A refused answer raises ``AnswerRefused`` and changes nothing.
        """
        async with self._lock(run_id):
            engine, state = self._load(run_id)
            if answer is not None:
                target = self._deepest_waiting(engine, state)
                if target is not state:
                    engine, state = self._load(target.run_id)
                step = engine.feed(state, answer, now=self.now(), secrets=self.secrets)
                self._commit(engine, step, previous=state.status)
                state = await self._drive(engine, step)
            else:
                await self._continue(engine, state)
        return await self.result_of(run_id)

    async def cancel(self, run_id: str) -> dict[str, Any]:
        async with self._lock(run_id):
            engine, state = self._load(run_id)
            await self._cancel_tree(engine, state)
        return await self.result_of(run_id)

    async def wake(self, run_id: str) -> None:
        """A due timer, or a run found interrupted at start-up.

        A run whose stored state is damaged is set aside (failed, reported,
        its state kept) and ``RunDamaged`` raised: woken again and again it
        would fail the same way for ever.
        """
        async with self._lock(run_id):
            try:
                engine, state = self._load(run_id)
            except RunDamaged as exc:
                self._set_aside(run_id, exc)
                raise
            await self._continue(engine, state)

    async def deliver(self, run_id: str, event: Event) -> dict[str, Any]:
        """Feed ``event`` to the run waiting for it; drive on; return the result.

        For answers that arrive from outside later, such as a connector
        service's callback (``ConnectorDone`` for the visit it waited on).
        Raises ``RunNotFound``, or ``EngineMisuse`` when the run is not waiting
        for that event; the run is unchanged then.
        """
        async with self._lock(run_id):
            engine, state = self._load(run_id)
            step = engine.feed(state, event, now=self.now(), secrets=self.secrets)
            self._commit(engine, step, previous=state.status)
            await self._drive(engine, step)
        return await self.result_of(run_id)

    async def result_of(self, run_id: str) -> dict[str, Any]:
        engine, state = self._load(run_id)
        return await self._result(engine, state)

    async def _result(self, engine: Engine, state: RunState) -> dict[str, Any]:
        result = engine.result(state)
        waiting = result.get("waiting")
        if waiting and waiting.get("kind") == "subflow" and waiting.get("child"):
            child = self.store.get_run(waiting["child"])
            if child is not None:
                child_result = await self.result_of(child.run_id)
                waiting["child_run"] = {
                    k: child_result[k] for k in ("run_id", "flow", "status", "waiting")
                }
        return result

    def busy(self, run_id: str) -> bool:
        """Whether something drives ``run_id``'s tree now (holds or awaits its lock)."""
        return run_id.split(".", 1)[0] in self._locks

    # -- internals --------------------------------------------------------------------
    def _lock(self, run_id: str) -> _RunLock:
        root = run_id.split(".", 1)[0]
        lock = self._locks.get(root)
        if lock is None:
            lock = self._locks[root] = _RunLock(self._locks, root)
        return lock

    def _load(self, run_id: str) -> tuple[Engine, RunState]:
        record = self.store.get_run(run_id)
        if record is None:
            raise RunNotFound(f"no run '{run_id}' in this state directory")
        engine = self.catalog.version(record.flow_id, record.version)
        if engine is None:
            raise OperationError(
                f"run '{run_id}' needs flow '{record.flow_id}' version "
                f"{record.version}, which this agent does not have"
            )
        try:
            return engine, RunState.from_json(record.state, engine.flow)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RunDamaged(
                f"run '{run_id}' cannot be continued: its stored state is damaged"
                f" ({type(exc).__name__}: {str(exc)[:200]})",
                hint="the run was set aside as failed; its stored state is kept for a person",
            ) from None

    def _set_aside(self, run_id: str, exc: RunDamaged) -> None:
        """Mark a damaged run failed, tell the observer, keep its state for a person."""
        record = self.store.get_run(run_id)
        if record is None or record.status not in ("running", "waiting"):
            return
        result: dict[str, Any] = {
            "run_id": run_id,
            "flow": record.flow_id,
            "version": record.version,
            "status": "failed",
            "outputs": {},
            "path": [],
            "waiting": None,
            "error": {"element": None, "message": exc.message},
        }
        with self.store.transaction():
            self.store.update_run(run_id, status="failed", state=record.state, wake_at=None)
            self.observer.committed(
                result=result, previous=record.status, visits=(), parent_id=record.parent_id
            )
        log.error("run %s set aside: %s", run_id, exc.message)

    def _deepest_waiting(self, engine: Engine, state: RunState) -> RunState:
        waiting = state.waiting
        if state.status == "waiting" and waiting and waiting.get("kind") == "subflow":
            child = waiting.get("child")
            if child and self.store.get_run(child) is not None:
                child_engine, child_state = self._load(child)
                return self._deepest_waiting(child_engine, child_state)
        return state

    def _commit(self, engine: Engine, step: Step, *, previous: str | None) -> None:
        state = step.state
        wake_at = None
        if state.status == "waiting" and state.waiting and state.waiting.get("until"):
            wake_at = datetime.fromisoformat(state.waiting["until"]).timestamp()
        text = state.to_json()
        parent_id = state.parent["run_id"] if state.parent else None
        with self.store.transaction():
            if previous is None:
                now = self.clock()
                self.store.insert_run(
                    RunRecord(
                        run_id=state.run_id,
                        flow_id=state.flow_id,
                        version=state.version,
                        status=state.status,
                        parent_id=parent_id,
                        created_at=now,
                        updated_at=now,
                        state=text,
                        wake_at=wake_at,
                    )
                )
            else:
                self.store.update_run(
                    state.run_id, status=state.status, state=text, wake_at=wake_at
                )
            if not isinstance(self.observer, NullObserver):  # else: no result to build
                self.observer.committed(
                    result=engine.result(state),
                    previous=previous,
                    visits=step.visits,
                    parent_id=parent_id,
                )

    async def _drive(self, engine: Engine, step: Step, *, notify: bool = True) -> RunState:
        """Execute commands until the run ends or waits on something slow.

        A child run that ends tells its parent, unless ``notify`` is off because
        the parent itself is driving the child.
        """
        while True:
            state = step.state
            if not step.commands:
                if notify and state.finished and state.parent:
                    await self._notify_parent(engine, state)
                return state
            command = step.commands[0]
            event: Event
            if isinstance(command, CallConnector):
                result = await self._call(command)
                event = ConnectorDone(visit=command.request.visit, result=result)
            elif isinstance(command, StartChild):
                finished = await self._child(engine, state, command)
                if finished is None:
                    return state  # the child waits; it will notify us when it ends
                event = finished
            elif isinstance(command, WaitUntil):
                delay = command.until.timestamp() - self.clock()
                if delay > self.inline_wait:
                    return state
                await self.sleep(max(delay, 0))
                event = TimerFired()
            else:  # pragma: no cover
                raise EngineMisuse(f"unknown command {command!r}")
            previous = state.status
            step = engine.feed(state, event, now=self.now(), secrets=self.secrets)
            self._commit(engine, step, previous=previous)

    async def _call(self, command: CallConnector) -> ConnectorResult:
        request = command.request
        try:
            connector = self.connectors.get(request.connector_type)
        except AgentError as exc:
            return ConnectorResult(ok=False, message=exc.message)
        try:
            result: ConnectorResult = await connector.call(request)
        except Exception as exc:  # a connector bug must fault the element, not kill the agent
            log.exception("connector %s failed unexpectedly", request.connector_type)
            message = f"connector '{request.connector}' failed: {type(exc).__name__}"
            return ConnectorResult(ok=False, message=message)
        return result

    async def _child(
        self, engine: Engine, parent: RunState, command: StartChild
    ) -> ChildFinished | None:
        existing = self.store.get_run(command.child_run_id)
        if existing is None:
            depth = command.child_run_id.count(".")
            child_engine = self.catalog.active(command.flow_id)
            why = None
            if child_engine is None:
                why = f"flow '{command.flow_id}' is not known to this agent"
            elif depth > MAX_DEPTH:
                why = f"subflows are nested more than {MAX_DEPTH} deep"
            if why is not None or child_engine is None:
                return ChildFinished(visit=command.visit, status="failed", error=why)
            parent_link = {
                "run_id": parent.run_id,
                "element": command.element,
                "visit": command.visit,
            }
            try:
                step = child_engine.start(
                    command.child_run_id,
                    command.inputs,
                    now=self.now(),
                    secrets=self.secrets,
                    parent=parent_link,
                )
            except InputInvalid as exc:
                return ChildFinished(
                    visit=command.visit, status="failed", error=f"invalid inputs: {exc}"
                )
            self._commit(child_engine, step, previous=None)
            child = await self._drive(child_engine, step, notify=False)
        else:
            child_engine, child = self._load(existing.run_id)
            if not child.finished:
                await self._continue(child_engine, child, notify=False)
                child_engine, child = self._load(existing.run_id)
        if not child.finished:
            return None
        result = child_engine.result(child)
        error = result["error"]["message"] if result.get("error") else None
        return ChildFinished(
            visit=command.visit,
            status=child.status,
            outputs=child_engine.outputs(child),
            error=error,
        )

    async def _notify_parent(self, engine: Engine, child: RunState) -> None:
        assert child.parent is not None
        parent_engine, parent = self._load(child.parent["run_id"])
        pending = parent.pending
        if not pending or pending.get("child") != child.run_id:
            return  # already applied (a replay after a crash)
        result = engine.result(child)
        error = result["error"]["message"] if result.get("error") else None
        event = ChildFinished(
            visit=int(pending["visit"]),
            status=child.status,
            outputs=engine.outputs(child),
            error=error,
        )
        step = parent_engine.feed(parent, event, now=self.now(), secrets=self.secrets)
        self._commit(parent_engine, step, previous=parent.status)
        await self._drive(parent_engine, step)

    async def _continue(self, engine: Engine, state: RunState, *, notify: bool = True) -> None:
        if state.finished:
            if notify and state.parent:
                await self._notify_parent(engine, state)
            return
        waiting = state.waiting or {}
        if state.status == "waiting" and waiting.get("kind") == "subflow" and state.pending:
            step = engine.pending_commands(state, now=self.now(), secrets=self.secrets)
        elif state.status == "waiting" and waiting.get("kind") == "timer":
            until = datetime.fromisoformat(waiting["until"])
            delay = until.timestamp() - self.clock()
            if delay > self.inline_wait:
                return
            await self.sleep(max(delay, 0))
            step = engine.pending_commands(state, now=self.now(), secrets=self.secrets)
            if step.state is not state:
                self._commit(engine, step, previous=state.status)
        elif state.status == "running":
            step = engine.pending_commands(state, now=self.now(), secrets=self.secrets)
            if not step.commands or step.visits or step.state.status != state.status:
                self._commit(engine, step, previous=state.status)
        else:
            return
        await self._drive(engine, step, notify=notify)

    async def _cancel_tree(self, engine: Engine, state: RunState) -> None:
        child_id = (state.pending or {}).get("child")
        if child_id and self.store.get_run(child_id) is not None:
            child_engine, child = self._load(child_id)
            await self._cancel_tree(child_engine, child)
        step = engine.feed(state, Cancel(), now=self.now(), secrets=self.secrets)
        if step.state is not state:
            self._commit(engine, step, previous=state.status)


def new_secret_token() -> str:
    return pysecrets.token_urlsafe(24)


__all__ = ["AnswerRefused", "InputInvalid", "RunDamaged", "RunNotFound", "Runner", "new_run_id"]
