"""Runs asked for by the control plane, and the pool of tasks that drive runs.

``RunPool`` owns every task that drives a run (a dispatched start, a due
timer, a run resumed after a crash).  Its tasks live in the supervisor's
``TaskGroup``; each is guarded so a failing run never tears the group down,
and at most one task drives a given run id at a time.

``Dispatcher`` turns ``start_run`` into ``Runner.start`` with the control
plane's run id as the local run id, and acknowledges only once the run's
first step is committed: an accepted run survives a crash, a refused one
left nothing behind.  A repeated ``run_id`` is acknowledged again and never
starts a second run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from agent.errors import AgentError
from agent.flow import values as V
from agent.flow.engine import Engine, InputInvalid, convert_inputs
from agent.flow.model import Flow
from agent.link.outbox import Outbox
from agent.protocol.frames import CancelRun, RunAck, StartRun
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.base import RUNNING

log = logging.getLogger("flow_agent.dispatch")

# The control plane's run ids become local ids; a "." would read as a subflow run.
_RUN_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")

FLOW_UNKNOWN: Final = "flow_unknown"
INPUTS_INVALID: Final = "inputs_invalid"
OUTBOX_FULL: Final = "outbox_full"
DRAINING: Final = "draining"
RUN_ID_INVALID: Final = "run_id_invalid"
STORE_ERROR: Final = "store_error"
# A refusal's message is a line for a person, not a report: bounded.
MESSAGE_LIMIT: Final = 500
_EXPECTED: Final = {
    "string": "a string",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "datetime": "an ISO 8601 datetime",
    "object": "a JSON object",
    "list": "a JSON list",
}


class TimedCatalog(Catalog):
    """A catalog whose engines time element visits with a monotonic clock.

    The engine's default clock reads zero; the outbox needs real visit
    timings for ``element.left`` durations.
    """

    def __init__(self, *args: Any, mono: Callable[[], float] = time.monotonic, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mono = mono

    def engine(self, flow: Flow) -> Engine:
        engine = super().engine(flow)
        engine.clock = self.mono
        return engine


class RunPool:
    """The tasks that drive runs; bound to the supervisor's task group."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    def bind(self, group: asyncio.TaskGroup) -> None:
        self._group = group

    def busy(self, run_id: str) -> bool:
        return run_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, run_id: str, work: Coroutine[Any, Any, Any]) -> asyncio.Task[None] | None:
        """Drive ``run_id`` with ``work`` unless a task already does; returns the task."""
        if self._group is None or run_id in self._tasks:
            work.close()
            return None
        task = self._group.create_task(self._guard(run_id, work), name=f"run {run_id}")
        self._tasks[run_id] = task
        self._idle.clear()
        return task

    async def _guard(self, run_id: str, work: Coroutine[Any, Any, Any]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            # Stopping: the run's last step is committed; the next start resumes it.
            raise
        except AgentError as exc:
            # A known failure (a full disk, an I/O error) says what to do; no traceback.
            log.error("run %s stopped: %s (it goes on from its last step later)", run_id, exc)
        except Exception:
            log.exception("run %s stopped with an unexpected error", run_id)
        finally:
            self._tasks.pop(run_id, None)
            if not self._tasks:
                self._idle.set()

    def cancel(self, run_id: str) -> asyncio.Task[None] | None:
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
        return task

    async def drain(self, timeout: float, *, force: asyncio.Event | None = None) -> bool:
        """Take no new runs; wait up to ``timeout`` (or until ``force``) for running ones.

        Whatever still runs then is cancelled: its last step is committed, so
        the next start resumes it.  Returns True when every task finished by itself.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks and loop.time() < deadline and not (force and force.is_set()):
            try:
                async with asyncio.timeout(min(0.1, max(deadline - loop.time(), 0))):
                    await self._idle.wait()
            except TimeoutError:
                pass
        if not self._tasks:
            return True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return False


class Dispatcher:
    """``start_run`` and ``cancel_run`` from the control plane."""

    def __init__(
        self,
        *,
        runner: Runner,
        pool: RunPool,
        outbox: Outbox,
        is_synced: Callable[[str], bool],
        on_started_hook: Callable[[Callable[[str], None]], None],
    ) -> None:
        self.runner = runner
        self.pool = pool
        self.outbox = outbox
        self.is_synced = is_synced
        self._started: dict[str, asyncio.Future[None]] = {}
        on_started_hook(self._run_started)

    def _run_started(self, run_id: str) -> None:
        waiter = self._started.get(run_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _engine(self, msg: StartRun) -> Engine | None:
        if not self.is_synced(msg.flow):
            return None
        catalog = self.runner.catalog
        if msg.version is None:
            return catalog.active(msg.flow)
        return catalog.version(msg.flow, msg.version)

    async def start_run(self, msg: StartRun) -> RunAck:
        run_id = msg.run_id

        def refuse(reason: str, why: str, *, told: str | None = None) -> RunAck:
            # The log keeps the whole story; the control plane hears ``told``
            # (``why`` unless that may quote business data).
            log.warning("run %s of %s refused (%s): %s", run_id, msg.flow, reason, why)
            said = why if told is None else told
            if len(said) > MESSAGE_LIMIT:
                said = said[: MESSAGE_LIMIT - 1] + "…"
            return RunAck(run_id=run_id, accepted=False, reason=reason, message=said)

        if not _RUN_ID.fullmatch(run_id):
            return refuse(RUN_ID_INVALID, "run ids are 1-128 letters, digits, '_' or '-'")
        if self.pool.busy(run_id) or self.runner.store.get_run(run_id) is not None:
            return RunAck(run_id=run_id, accepted=True)  # a repeat: never a second run
        if self.pool.draining:
            return refuse(DRAINING, "the agent is stopping")
        engine = self._engine(msg)
        if engine is None:
            which = "the active version" if msg.version is None else f"version {msg.version}"
            return refuse(FLOW_UNKNOWN, f"{which} of flow {msg.flow!r} is not synced here")
        try:
            convert_inputs(engine.flow, msg.inputs)
        except InputInvalid as exc:
            told = "; ".join(input_problems(engine.flow, msg.inputs))
            return refuse(INPUTS_INVALID, "; ".join(exc.problems), told=told)
        if self.outbox.full():
            return refuse(
                OUTBOX_FULL,
                f"{self.outbox.depth()} events wait for the control plane"
                f" (limit {self.outbox.limit}); new runs start again once they are delivered",
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._started[run_id] = waiter
        try:
            task = self.pool.spawn(
                run_id, self.runner.start(msg.flow, msg.inputs, run_id=run_id, engine=engine)
            )
            if task is None:
                return refuse(DRAINING, "the agent is stopping")
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._started.pop(run_id, None)
        # The commit may have failed after the observer saw it: trust only the store.
        if self.runner.store.get_run(run_id) is None:
            return refuse(STORE_ERROR, "the run could not be stored; see the agent's log")
        log.info("run %s of %s v%d accepted", run_id, msg.flow, engine.flow.version)
        return RunAck(run_id=run_id, accepted=True)

    async def cancel_run(self, msg: CancelRun) -> None:
        record = self.runner.store.get_run(msg.run_id)
        if record is None:
            log.warning("cancel for unknown run %s ignored", msg.run_id)
            return
        task = self.pool.cancel(msg.run_id)
        if task is not None:
            # Stop the driving task first (a connector call may hold the run for long);
            # its last step is committed, so cancelling it loses nothing.
            await asyncio.gather(task, return_exceptions=True)
        self.pool.spawn(msg.run_id, self._cancel(msg.run_id))

    async def _cancel(self, run_id: str) -> None:
        result = await self.runner.cancel(run_id)
        log.info("run %s %s", run_id, result["status"])


def input_problems(flow: Flow, inputs: Mapping[str, Any]) -> list[str]:
    """What is wrong with each input, by name and declared type, never quoting a value.

    Input values may be business data, and a run refused for them never
    reaches the outbox's minimising: the refusal names only what the flow
    itself declares.
    """
    accepted = {v.name for v in flow.inputs}
    problems: list[str] = []
    for name, raw in inputs.items():
        spec = flow.values.get(name)
        if spec is None or name not in accepted:
            try:
                convert_inputs(flow, {name: raw})
            except InputInvalid as exc:
                problems.extend(exc.problems)  # input names only: nothing to hide
            continue
        try:
            V.convert(spec.type, raw)
        except V.ConversionError:
            expected = _EXPECTED.get(spec.type, f"a valid {spec.type}")
            problems.append(f"input '{name}' is not {expected}")
    return problems


def interrupted_runs(runner: Runner) -> list[str]:
    """Runs a crash left ``running``: they go on where their last commit left them."""
    records = runner.store.list_runs(status=RUNNING, top_level=False, limit=1_000_000)
    return [r.run_id for r in records]


__all__ = [
    "DRAINING",
    "FLOW_UNKNOWN",
    "INPUTS_INVALID",
    "OUTBOX_FULL",
    "Dispatcher",
    "RunPool",
    "TimedCatalog",
    "input_problems",
    "interrupted_runs",
]
