"""The daemon's lifecycle: readiness, the watchdog, service-manager status, reloads.

``Agent.serve`` (agent/daemon.py) owns the one ``asyncio.TaskGroup``; the
tasks of this module run in it (``Lifecycle.tasks``).

Ready means ready.  ``READY=1`` goes to systemd, ``/readyz`` turns green
and the lifecycle state becomes ``ready`` once every condition of
``Readiness`` is met: the store is open, the local API listens (when the
daemon serves one), and the first flow sync is done.  The protocol has no
end-of-sync frame, so the first sync counts as done once the session is up,
the inventory went out and the control plane has sent no ``flow`` or
``activate`` frame for ``sync_settle`` seconds: ``SYNC_SETTLE``, or twice
the time the link took to open when that is longer (the control plane
answers an inventory at once, frames back to back, one round trip later).
Offline counts too when it is safe: the first attempt to reach the control
plane failed and flows synced earlier are stored here, so they run; with no
flow at all the agent stays not ready until the control plane answers.  A
revoked or refused identity is terminal: the agent stops (exit 78) and says
why in ``STATUS=``.

The watchdog is fed only while the loops really progress: every
``WATCHDOG_USEC / 2`` the watchdog task checks that every watched loop (the
timer loop) has beaten within its allowance; if the event loop is blocked
the watchdog task does not run at all.  Either way systemd stops hearing
``WATCHDOG=1`` and restarts the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, Final

from agent import __version__
from agent.daemon_state import LIFECYCLE_KEY
from agent.errors import AgentError
from agent.link.state import LinkState, read_link_status
from agent.link.sync import FlowSync
from agent.link.transport import ssl_context
from agent.logs import configure_logging
from agent.metrics import AgentMetrics
from agent.notify import Notifier, Progress, Watchdog
from agent.protocol.frames import Activate, FlowAck, FlowPush
from agent.settings import Settings

if TYPE_CHECKING:
    from agent.daemon import Agent

log = logging.getLogger("flow_agent.lifecycle")

SYNC_SETTLE: Final = 0.3  # seconds without a flow frame after the inventory (at least)
MAX_SYNC_SETTLE: Final = 5.0
STARTUP_POLL: Final = 0.02
REPORT_INTERVAL: Final = 1.0  # STATUS= line and gauges

# What a SIGHUP changes in a running agent; every other setting needs a restart.
LIVE_SETTINGS: Final = frozenset(
    {
        "log_level",
        "log_format",
        "report_outputs",
        "outbox_limit",
        "drain_timeout",
        "timer_interval",
        "connect_timeout",
        "ca_file",
        "status_interval",
        "heartbeat",  # from the next session
        "max_frame_bytes",  # from the next session
    }
)


class Readiness:
    """Named conditions; ready once all are met.  Stopping turns it off for good."""

    def __init__(self, **conditions: str) -> None:
        self._pending: dict[str, str] = dict(conditions)  # name -> what, in words
        self.event = asyncio.Event()
        self.stopping = False
        self.detail = ""  # how the last condition was met ("offline: ...")

    def require(self, name: str, what: str) -> None:
        """Add a condition (the API adds ``api`` before ``serve``)."""
        if not self.event.is_set():
            self._pending[name] = what

    def done(self, name: str, detail: str = "") -> None:
        if self._pending.pop(name, None) is not None and detail:
            self.detail = detail
        if not self._pending:
            self.event.set()

    def pending(self) -> list[str]:
        return list(self._pending.values())

    @property
    def ready(self) -> bool:
        return self.event.is_set() and not self.stopping

    def check(self) -> bool | str:
        """For ``/readyz``: True, or why not."""
        if self.stopping:
            return "draining: the agent is stopping"
        if self._pending:
            return "waiting for " + ", ".join(self._pending.values())
        return True


class WatchedSync(FlowSync):
    """``FlowSync`` that tells the lifecycle about every frame (readiness, metrics)."""

    def __init__(self, *args: Any, on_frame: Callable[[bool], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_frame = on_frame

    def on_flow(self, msg: FlowPush) -> FlowAck:
        ack = super().on_flow(msg)
        self.on_frame(ack.ok)
        return ack

    def on_activate(self, msg: Activate) -> FlowAck:
        ack = super().on_activate(msg)
        self.on_frame(ack.ok)
        return ack


class Lifecycle:
    """Readiness, watchdog, STATUS= lines, gauges and reloads of one ``Agent``."""

    def __init__(
        self,
        *,
        notifier: Notifier | None = None,
        watchdog_interval: float | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        manage_logging: bool = False,
        mono: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.notifier = notifier or Notifier(None)
        self.metrics = AgentMetrics()  # replaced by the agent's own in attach()
        self.watchdog_interval = watchdog_interval
        self.reload_settings = reload_settings
        self.manage_logging = manage_logging
        self.mono = mono
        self.clock = clock
        self.readiness = Readiness(store="the store", sync="the first flow sync")
        self.progress = Progress(mono=mono)
        self.reload_hooks: list[Callable[[], object]] = []
        self.state = "starting"
        self.connect_failures = 0
        self.last_sync_frame = 0.0
        self.sync_settle = SYNC_SETTLE
        self._agent: Agent | None = None
        self._started_at = clock()
        self._sessions_seen = 0
        self._status = ""

    def attach(self, agent: Agent, *, metrics: AgentMetrics) -> None:
        self._agent = agent
        self.metrics = metrics

    @property
    def agent(self) -> Agent:
        assert self._agent is not None, "Lifecycle.attach was not called"
        return self._agent

    # -- hooks the agent calls ------------------------------------------------------

    def sync_frame(self, ok: bool) -> None:
        self.last_sync_frame = self.mono()
        self.metrics.flow_syncs.labels(result="applied" if ok else "rejected").inc()

    def connect_failed(self) -> None:
        self.connect_failures += 1
        self.metrics.link_connect_failures.inc()

    def connected(self, *, took: float) -> None:
        """A link opened in ``took`` seconds (TCP, TLS, upgrade: a few round trips)."""
        # The control plane answers the inventory about one round trip later:
        # on a slow path, wait for its flows longer than on loopback.
        self.sync_settle = min(max(SYNC_SETTLE, 2 * took), MAX_SYNC_SETTLE)

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The long-lived tasks to start in the supervisor's group."""
        agent = self.agent
        self._set_state("starting")
        self.readiness.done("store")
        interval = self.watchdog_interval
        self.progress.watch(
            "timer", lambda: 3 * agent.settings.timer_interval + (interval or 0.0) + 1.0
        )
        found: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("startup", self._startup()),
            ("report", self._report()),
        ]
        if interval is not None:
            watchdog = Watchdog(
                notifier=self.notifier,
                progress=self.progress,
                interval=interval,
                metrics=self.metrics,
            )
            found.append(("watchdog", watchdog.run()))
        return found

    def stopping(self, *, runs: int) -> None:
        """The first stop request: no longer ready, tell systemd, leave room for the drain."""
        drain = self.agent.settings.drain_timeout
        self.readiness.stopping = True
        self.progress.forget("timer")  # the timer loop ends now; the drain is bounded
        self._set_state("draining")
        text = f"draining: {runs} run(s) in flight, up to {drain:g} s"
        self.notifier.stopping(text)
        # A drain_timeout raised in agent.toml must not be cut short by the unit's stop timeout.
        self.notifier.extend_timeout(drain + 10.0)
        self._status = text

    def stopped(self, *, leftover: list[str]) -> None:
        if leftover:
            log.warning(
                "%d run(s) were still busy at the end of the drain; their last step is"
                " committed and they resume on the next start: %s",
                len(leftover),
                ", ".join(sorted(leftover)[:20]) + (" ..." if len(leftover) > 20 else ""),
            )
        else:
            log.info("drained: no run was left in flight")
        self._set_state("stopped")

    # -- readiness ----------------------------------------------------------------

    async def _startup(self) -> None:
        await self._first_sync()
        await self.readiness.event.wait()
        if self.readiness.stopping:
            return
        self._set_state("ready")
        text = self._status_text()
        self._status = text
        self.notifier.ready(text)
        log.info(
            "ready: %s (%.2f s after start)",
            self.readiness.detail or text,
            self.clock() - self._started_at,
        )

    async def _first_sync(self) -> None:
        agent = self.agent
        link_up_at: float | None = None
        while not self.readiness.stopping:
            if agent.link.ready.is_set():
                now = self.mono()
                if link_up_at is None:
                    link_up_at = now
                if now - max(link_up_at, self.last_sync_frame) >= self.sync_settle:
                    flows = len(agent.sync.inventory())
                    self.readiness.done("sync", f"connected, {flows} flow(s) synced")
                    return
            else:
                link_up_at = None
                if self.connect_failures or self._failed_since_start():
                    flows = len(agent.store.list_flows(active_only=True))
                    if flows:
                        self.readiness.done(
                            "sync",
                            f"offline (the control plane is unreachable), running the {flows}"
                            " flow(s) synced earlier",
                        )
                        return
                if read_link_status(agent.store).state.terminal:
                    self.readiness.done("sync", self._link_words())
                    return
            await asyncio.sleep(STARTUP_POLL)

    def _failed_since_start(self) -> bool:
        status = read_link_status(self.agent.store)
        return (
            status.state is LinkState.DISCONNECTED
            and status.since is not None
            and status.since >= self._started_at
        )

    # -- STATUS= lines and gauges -------------------------------------------------------

    def _link_words(self) -> str:
        agent = self.agent
        status = read_link_status(agent.store)
        if status.state is LinkState.CONNECTED and agent.link.ready.is_set():
            return f"connected to {agent.identity.url}"
        if status.state is LinkState.REVOKED:
            return "revoked by the control plane: pair again (flow-agent pair --token-file FILE)"
        if status.state is LinkState.AUTH_REFUSED:
            return "refused by the control plane: pair again (flow-agent pair --token-file FILE)"
        if status.state is LinkState.NEVER:
            return "connecting to the control plane"
        return f"offline ({status.detail or 'disconnected'}); retrying"

    def _status_text(self) -> str:
        agent = self.agent
        flows = len(agent.store.list_flows(active_only=True))
        text = (
            f"{self._link_words()}; {flows} flow(s), {len(agent.pool)} run(s) in flight,"
            f" outbox {agent.outbox.depth()}"
        )
        if self.state == "starting":
            text = "starting: waiting for " + ", ".join(self.readiness.pending()) + "; " + text
        return text

    def sample(self) -> None:
        """Update gauges and, when it changed, the STATUS= line."""
        agent = self.agent
        self.metrics.outbox_depth.set(agent.outbox.depth())
        self.metrics.runs_in_flight.set(len(agent.pool))
        self.metrics.set_link_state(read_link_status(agent.store).state.value)
        sessions = agent.link.sessions
        if sessions > self._sessions_seen:
            self.metrics.link_reconnects.inc(sessions - max(self._sessions_seen, 1))
            self._sessions_seen = sessions
        if self.state in ("starting", "ready"):
            text = self._status_text()
            if text != self._status:
                self._status = text
                self.notifier.status(text)

    async def _report(self) -> None:
        while True:
            try:
                self.sample()
            except AgentError as exc:  # a busy or failing store must not end the agent here
                log.debug("cannot sample the agent's state: %s", exc.message)
            await asyncio.sleep(REPORT_INTERVAL)

    def _set_state(self, state: str) -> None:
        self.state = state
        if state in ("starting", "ready", "draining"):
            self.metrics.set_lifecycle(state)
        doc = {"state": state, "since": self.clock(), "pid": os.getpid(), "version": __version__}
        try:
            self.agent.store.set_meta(LIFECYCLE_KEY, json.dumps(doc))
        except AgentError as exc:
            log.warning("cannot record the lifecycle state %s: %s", state, exc.message)

    # -- SIGHUP -------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration and apply what can change live.  False when refused."""
        # systemd's reload handshake (RELOADING=1 ... READY=1) only once ready:
        # a READY=1 before that would announce a readiness the agent lacks.
        announce = self.state == "ready"
        if announce:
            self.notifier.reloading(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        try:
            return self._reload()
        finally:
            if announce:
                self.notifier.ready(self._status or None)

    def _reload(self) -> bool:
        if self.reload_settings is None:
            log.warning("SIGHUP: this agent was not started from a configuration to re-read")
            return False
        try:
            new = self.reload_settings()
            if new.ca_file is not None:
                ssl_context(new.ca_file)  # refuse an unreadable CA file before using it
        except AgentError as exc:
            self.metrics.config_reloads.labels(result="refused").inc()
            log.error("configuration not reloaded, the running one stays: %s", exc.message)
            return False
        live, later = self.apply(new)
        for hook in self.reload_hooks:
            hook()
        self.metrics.config_reloads.labels(result="applied").inc()
        if live:
            log.info("configuration reloaded; applied: %s", ", ".join(live))
        else:
            log.info("configuration reloaded; nothing changed that applies live")
        if later:
            log.warning("changed, but applied only on restart: %s", ", ".join(later))
        log.debug(
            "settings now in effect: %s",
            ", ".join(f"{f.name}={getattr(self.agent.settings, f.name)}" for f in fields(Settings)),
        )
        return True

    def apply(self, new: Settings) -> tuple[list[str], list[str]]:
        """Apply the live part of ``new``; returns (applied, needing a restart)."""
        agent = self.agent
        old = agent.settings
        changed = [f.name for f in fields(Settings) if getattr(old, f.name) != getattr(new, f.name)]
        live = [name for name in changed if name in LIVE_SETTINGS]
        later = [name for name in changed if name not in LIVE_SETTINGS]
        settings = replace(new, **{name: getattr(old, name) for name in later})
        agent.settings = settings
        agent.observer.report_outputs = settings.report_outputs
        agent.outbox.limit = settings.outbox_limit
        agent.link.options = replace(
            agent.link.options,
            heartbeat=settings.heartbeat,
            max_frame_bytes=settings.max_frame_bytes,
            handshake_timeout=settings.connect_timeout,
            status_interval=settings.status_interval,
        )
        if self.manage_logging and {"log_level", "log_format"} & set(live):
            configure_logging(level=settings.log_level, fmt=settings.log_format)
        return live, later


class Signals:
    """SIGTERM/SIGINT and SIGHUP for the daemon's whole life, start-up included.

    Before the agent exists (pairing, opening the store) a first stop request
    is kept and honoured as soon as the agent is assembled; a second one
    cancels the start-up at once (nothing half-written: identity files are
    replaced atomically, the store is transactional).
    """

    STOP: Final = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, *, main: asyncio.Task[Any] | None = None) -> None:
        self.main = main
        self.requested = 0
        self._agent: Agent | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sig in self.STOP:
            self._loop.add_signal_handler(sig, self.stop)
        self._loop.add_signal_handler(signal.SIGHUP, self.hup)

    def remove(self) -> None:
        if self._loop is None:
            return
        for sig in (*self.STOP, signal.SIGHUP):
            self._loop.remove_signal_handler(sig)
        self._loop = None

    def attach(self, agent: Agent) -> None:
        self._agent = agent
        if self.requested:
            agent.request_stop()

    def stop(self) -> None:
        self.requested += 1
        if self._agent is not None:
            self._agent.request_stop()
        elif self.requested == 1:
            log.info("stop requested while starting: stopping as soon as start-up is done")
        else:
            log.warning("second stop request while starting: stopping now")
            if self.main is not None:
                self.main.cancel()

    def hup(self) -> None:
        if self._agent is None:
            log.info("SIGHUP while starting: the configuration just read is the current one")
            return
        self._agent.lifecycle.reload()


__all__ = [
    "LIVE_SETTINGS",
    "Lifecycle",
    "Progress",
    "Readiness",
    "Signals",
    "Watchdog",
    "WatchedSync",
]
