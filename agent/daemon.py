"""``flow-agent run``: the daemon, one supervisor owning every task.

Start-up: open the store (its directory lock refuses a second agent), pair
from ``FLOW_AGENT_PAIRING_TOKEN``/``FLOW_AGENT_PAIRING_TOKEN_FILE`` when the
state directory has no identity yet, assemble the runner and the link, then
run in one ``asyncio.TaskGroup``: the link, the timer loop that wakes due
runs, and every task that drives a run (started from the group by
``RunPool``).  Runs found ``running`` at start were interrupted by a crash;
they go on from their last commit.

Stopping is two-stage.  The first SIGTERM/SIGINT: take no new runs (the
control plane hears ``draining``), stop waking timers, give running runs up
to ``drain_timeout`` to finish or park, give the outbox a moment to drain,
close the link, exit 0.  A second signal cancels the running runs at once;
their last step is committed, so the next start resumes them.

Synced flows keep running while the control plane is unreachable: timers
and resumes need only the store.

The lifecycle around it (``agent.supervisor``): readiness (``READY=1`` once
the store, the API and the first sync are up), the systemd watchdog fed
while the timer loop progresses, ``STATUS=`` lines, SIGHUP reloads, and
exit codes: 0 after a requested stop, 78 (EX_CONFIG) when the configuration
or the identity is unusable, 70 (EX_SOFTWARE) for a crash.  docs/operations.md
tells admins the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.api import create_app
from agent.api.metrics import Metrics
from agent.api.serve import URL_META, ApiServer, api_token, listen_address, public_url
from agent.connectors.registry import ConnectorRegistry, default_registry
from agent.errors import AgentError, ConfigError, StoreError
from agent.identity import Identity, load_private_key
from agent.link.client import Link, LinkOptions
from agent.link.dispatch import Dispatcher, RunPool, TimedCatalog, interrupted_runs
from agent.link.outbox import Outbox, OutboxObserver
from agent.link.pairing import (
    PairingFailed,
)
from agent.link.pairing_env import ensure_identity
from agent.link.secret_inbox import SecretReceiver
from agent.link.state import REPAIR_HINT, LinkState, read_link_status
from agent.link.transport import check_plaintext, link_url, open_link, ssl_context
from agent.logs import LogContextObserver, RedactingSecrets, add_secret, configure_logging
from agent.metrics import AgentMetrics, chain
from agent.notify import Notifier, watchdog_interval
from agent.runtime.callbacks import CallbackIssuer
from agent.runtime.runner import Runner
from agent.runtime.triggers import Scheduler
from agent.secrets import SecretStore, SecretsView
from agent.settings import Settings
from agent.store.sqlite import SqliteStore
from agent.supervisor import Lifecycle, Signals, WatchedSync

log = logging.getLogger("flow_agent.daemon")

FLUSH_ON_STOP: Final = 2.0  # seconds to let the outbox drain before the link closes
EXIT_CONFIG: Final = 78  # EX_CONFIG: systemd's RestartPreventExitStatus= stops on it
EXIT_CRASH: Final = 70  # EX_SOFTWARE
WAKE_RETRY: Final = 60.0  # the longest wait before a run that could not go on is tried again
# How often to look for runs left 'running' with nobody driving them (a full
# disk or an I/O error stopped them mid-way): they go on from their last commit.
STALLED_SWEEP: Final = 2.0


class Agent:
    """The assembled agent around one open store and one identity."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: SqliteStore,
        identity: Identity,
        key: Ed25519PrivateKey,
        registry: ConnectorRegistry | None = None,
        secrets: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        lifecycle: Lifecycle | None = None,
        serve_api: bool = False,
        callbacks: CallbackIssuer | None = None,
        vault: SecretStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.identity = identity
        self.clock = clock
        self.mono = mono
        if callbacks is None and serve_api:
            callbacks = CallbackIssuer.for_state_dir(settings.state_dir, base_url=None)
        # Connector services call back through the local API (its URL is set once it listens).
        self.callbacks = callbacks
        self.registry = registry or default_registry(
            callbacks=callbacks, **settings.connector_options()
        )
        # One registry for /metrics: the API's collectors and the daemon's.
        self.metrics = Metrics()
        self.ops_metrics = AgentMetrics(registry=self.metrics.registry)
        self.lifecycle = lifecycle or Lifecycle(mono=mono, clock=clock)
        self.lifecycle.attach(self, metrics=self.ops_metrics)
        self.outbox = Outbox(store, limit=settings.outbox_limit)
        self.observer = OutboxObserver(
            self.outbox, report_outputs=settings.report_outputs, clock=clock, mono=mono
        )
        self.catalog = TimedCatalog(store, clock=clock, mono=mono)
        self.runner = Runner(
            store=store,
            catalog=self.catalog,
            connectors=self.ops_metrics.connectors(self.registry, mono=mono),
            secrets=secrets,
            # The outbox first: a commit it refuses is rolled back and counted nowhere.
            # Metrics counts runs and elements; ops_metrics times connector calls.
            observer=chain(self.observer, self.metrics, LogContextObserver()),
            clock=clock,
        )
        self.pool = RunPool()
        self.sync = WatchedSync(
            store=store,
            outbox=self.outbox,
            identity=identity,
            clock=clock,
            on_frame=self.lifecycle.sync_frame,
        )

        def hook(callback: Callable[[str], None]) -> None:
            self.observer.on_started = callback

        self.dispatcher = Dispatcher(
            runner=self.runner,
            pool=self.pool,
            outbox=self.outbox,
            is_synced=self.sync.is_synced,
            on_started_hook=hook,
        )
        url = link_url(identity.url)
        check_plaintext(url, allow_plaintext=settings.allow_plaintext)
        self.link = Link(
            identity=identity,
            key=key,
            store=store,
            outbox=self.outbox,
            sync=self.sync,
            dispatcher=self.dispatcher,
            options=LinkOptions(
                url=url,
                heartbeat=settings.heartbeat,
                max_frame_bytes=settings.max_frame_bytes,
                handshake_timeout=settings.connect_timeout,
                status_interval=settings.status_interval,
            ),
            open_ws=self._open,
            mono=mono,
            clock=clock,
            # Without a secret store (tests, embedding) sealed secrets are refused.
            on_secret=None
            if vault is None
            else SecretReceiver(
                store=vault,
                state_dir=settings.state_dir,
                agent_id=identity.agent_id,
                learn=add_secret,
            ),
        )
        self.ready = asyncio.Event()  # serving (readiness is self.lifecycle.readiness)
        self.stop_requested = asyncio.Event()
        self.force = asyncio.Event()
        # 0 after a requested stop; EXIT_CONFIG when the control plane revoked this agent.
        self.exit_code = 0
        # run id -> (when to try again, failures so far): backoff up to WAKE_RETRY
        self._wake_failed: dict[str, tuple[float, int]] = {}
        # Schedule triggers fire from the stored flows: no control plane needed.
        self.scheduler = Scheduler(
            store=store,
            catalog=self.catalog,
            runner=self.runner,
            spawn=self.pool.spawn,
            catch_up=settings.schedule_catch_up,
            clock=clock,
            rescan=settings.timer_interval,
            on_fire=self.ops_metrics.schedule_fired,
            accepting=self._accepting,  # backpressure, as for the API and the control plane
        )
        # The local API (only when asked: tests and embedders assemble agents
        # without one).  ``api_started`` is set once it listens, or at the start
        # of ``serve`` when there is none; the lifecycle's readiness also waits
        # for it (condition "api"), so READY=1 and /readyz come only after it.
        self.api_started = asyncio.Event()
        self.api_url: str | None = None
        self.api = self._build_api() if serve_api else None

    def _build_api(self) -> ApiServer:
        settings = self.settings
        host, port = listen_address(settings)
        token = api_token(settings)  # ConfigError beyond loopback without a token
        if token is not None:
            add_secret(token())  # a bearer token must never reach a log line
        app = create_app(
            runner=self.runner,
            token=token,
            ready=self.lifecycle.readiness.check,
            metrics=self.metrics,
            callbacks=self.callbacks,
            accepting=self._accepting,
        )
        self.lifecycle.readiness.require("api", "the local API")
        return ApiServer(app, host=host, port=port, grace=settings.drain_timeout)

    def _accepting(self) -> bool | str:
        """Whether the API may start runs now; else why not (its 503's code)."""
        if self.stop_requested.is_set():
            return "draining"
        if self.outbox.full():  # as the control plane's start_run is refused
            return "outbox_full"
        return True

    async def _start_api(self) -> None:
        """Bind the API before anything else runs: a taken port stops the start."""
        if self.api is None:
            self.api_started.set()
            return
        url = await self.api.start()
        self.api_url = url
        if self.callbacks is not None:
            self.callbacks.base_url = public_url(self.settings, url)
        self.store.set_meta(URL_META, url)
        log.info("local API listening on %s", url)
        self.lifecycle.readiness.done("api")
        self.api_started.set()

    async def _stop_api(self, *, grace: float | None = None) -> None:
        if self.api is not None:
            await self.api.stop(force=self.force, grace=grace)  # a no-op once stopped
        if self.api_url is not None:
            self.api_url = None
            self.store.set_meta(URL_META, "")

    async def _open(self, url: str) -> Any:
        began = self.mono()
        try:
            ws = await open_link(
                url,
                ca_file=self.settings.ca_file,
                max_frame_bytes=self.settings.max_frame_bytes,
                open_timeout=self.settings.connect_timeout,
            )
        except Exception:
            self.lifecycle.connect_failed()
            raise
        self.lifecycle.connected(took=self.mono() - began)
        return ws

    def request_stop(self) -> None:
        """First call: drain and stop; second call: stop now."""
        if self.stop_requested.is_set():
            log.warning("second stop request: cancelling running runs (they resume on restart)")
            self.force.set()
        else:
            log.info("stopping: no new runs, waiting for running ones to finish or park")
            self.stop_requested.set()

    async def serve(self) -> None:
        """Run until ``request_stop``; every task lives in this one group.

        Raises ConfigError when the control plane has revoked or refused this
        agent: a revoked agent runs nothing, and restarting cannot help.
        """
        self._check_not_revoked()
        await self._start_api()
        try:
            async with asyncio.TaskGroup() as group:
                self.pool.bind(group)
                lifecycle = [
                    group.create_task(work, name=name) for name, work in self.lifecycle.tasks()
                ]
                group.create_task(self._link_main(), name="link")
                timers = group.create_task(self._timers(), name="timers")
                schedules = group.create_task(self.scheduler.run(), name="schedules")
                if not self.stop_requested.is_set():
                    for run_id in interrupted_runs(self.runner):
                        log.info("run %s was interrupted; resuming it", run_id)
                        self.pool.spawn(run_id, self._wake(run_id))
                self.ready.set()
                await self.stop_requested.wait()
                self.lifecycle.stopping(runs=len(self.pool))
                timers.cancel()
                schedules.cancel()
                # The listener stays open while runs drain: new runs get 503
                # draining, but answers, cancels and connector callbacks still
                # land.  Then it closes, and runs driven by API requests get
                # what is left of drain_timeout.
                deadline = self.mono() + self.settings.drain_timeout
                await self.pool.drain(self.settings.drain_timeout, force=self.force)
                await self._stop_api(grace=max(0.0, deadline - self.mono()))
                if not self.force.is_set() and self.exit_code == 0:
                    await self._flush()
                self.link.stop()
                for task in lifecycle:
                    task.cancel()
        finally:
            await self._stop_api()
        await self.registry.close_all()
        self.lifecycle.stopped(leftover=interrupted_runs(self.runner))

    def _check_not_revoked(self) -> None:
        status = read_link_status(self.store)
        if status.state.terminal:
            raise ConfigError(
                f"the control plane {_verb(status.state)} this agent"
                f" ({status.detail or status.state.value}); it runs nothing until it is"
                " paired again. Its runs are kept and go on after the new pairing",
                hint=REPAIR_HINT,
            )

    async def _link_main(self) -> None:
        state = await self.link.run()
        if state.terminal:
            # Revocation stops the agent, not just the link: a revoked host must
            # not go on calling business systems.  Runs park as in a drain
            # (nothing is lost) and go on once the agent is paired again.
            log.error(
                "the control plane %s this agent: stopping (runs in flight park and go on"
                " after a new pairing); %s",
                _verb(state),
                REPAIR_HINT,
            )
            self.exit_code = EXIT_CONFIG
            self.request_stop()

    async def _flush(self) -> None:
        deadline = self.mono() + FLUSH_ON_STOP
        while (
            self.link.ready.is_set()
            and self.outbox.depth()
            and self.mono() < deadline
            and not self.force.is_set()
        ):
            await asyncio.sleep(0.05)

    async def _timers(self) -> None:
        next_sweep = self.mono() + STALLED_SWEEP
        while True:
            self.lifecycle.progress.beat("timer")
            for record in self.store.due_runs(self.clock()):
                self._wake_soon(record.run_id)
            if self.mono() >= next_sweep:
                next_sweep = self.mono() + STALLED_SWEEP
                for run_id in interrupted_runs(self.runner):
                    # Driven by the pool, an API request or a parent: not stalled.
                    if not self.runner.busy(run_id):
                        self._wake_soon(run_id)
            await asyncio.sleep(self.settings.timer_interval)

    def _wake_soon(self, run_id: str) -> None:
        retry = self._wake_failed.get(run_id)
        if retry is None or self.mono() >= retry[0]:
            self.pool.spawn(run_id, self._wake(run_id))

    async def _wake(self, run_id: str) -> None:
        try:
            await self.runner.wake(run_id)
        except AgentError as exc:
            failures = self._wake_failed.get(run_id, (0.0, 0))[1] + 1
            delay = min(WAKE_RETRY, 2.0**failures)
            log.error("cannot continue run %s: %s (trying again in %g s)", run_id, exc, delay)
            self._wake_failed[run_id] = (self.mono() + delay, failures)
        else:
            self._wake_failed.pop(run_id, None)


def _verb(state: LinkState) -> str:
    return "revoked" if state is LinkState.REVOKED else "refused"


async def run_daemon(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    install_signals: bool = True,
    on_agent: Callable[[Agent], None] | None = None,
    reload_settings: Callable[[], Settings] | None = None,
    manage_logging: bool = False,
    notifier: Notifier | None = None,
) -> int:
    """The whole daemon; returns the exit code (0 after a requested stop).

    Raises ``ConfigError`` (exit 78) when the configuration or the identity
    is unusable: restarting cannot help.  ``reload_settings`` re-reads the
    configuration on SIGHUP; ``manage_logging`` lets the daemon own the log
    handlers (level and format from the settings, live on reload).
    """
    env = os.environ if env is None else env
    if manage_logging:
        configure_logging(level=settings.log_level, fmt=settings.log_format)
    notifier = Notifier.from_env(env) if notifier is None else notifier
    signals = Signals(main=asyncio.current_task())
    if install_signals:
        signals.install()
    try:
        return await _run(
            settings,
            env=env,
            signals=signals,
            on_agent=on_agent,
            lifecycle=Lifecycle(
                notifier=notifier,
                watchdog_interval=watchdog_interval(env),
                reload_settings=reload_settings,
                manage_logging=manage_logging,
            ),
        )
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not signals.requested or task is None:
            raise
        task.uncancel()  # the second stop request cut the start-up short, as asked
        log.info("stopped during start-up")
        return 0
    except ConfigError as exc:
        notifier.status(f"configuration error: {exc.message}")
        raise
    finally:
        if install_signals:
            signals.remove()
        notifier.close()


async def _run(
    settings: Settings,
    *,
    env: Mapping[str, str],
    signals: Signals,
    on_agent: Callable[[Agent], None] | None,
    lifecycle: Lifecycle,
) -> int:
    store = SqliteStore.open(settings.state_dir, synchronous=settings.sync)
    vault: SecretStore | None = None
    try:
        try:
            if settings.ca_file is not None:
                ssl_context(settings.ca_file)  # unreadable: say so now, not at each connect
            identity = await ensure_identity(settings, store, env=env)
            key = load_private_key(settings.state_dir)
            vault = SecretStore.for_store(store)
            secrets = RedactingSecrets(SecretsView(vault))
            secrets.refresh()
            lifecycle.reload_hooks.append(secrets.refresh)
            # The callback URL is known once the API listens (Agent._start_api).
            callbacks = CallbackIssuer.for_state_dir(settings.state_dir, base_url=None)
            registry = default_registry(
                secrets=secrets,
                state_dir=settings.state_dir,
                callbacks=callbacks,
                **settings.connector_options(),
            )
            agent = Agent(
                settings,
                store=store,
                identity=identity,
                key=key,
                registry=registry,
                secrets=secrets,
                lifecycle=lifecycle,
                serve_api=True,
                callbacks=callbacks,
                vault=vault,
            )
        except (PairingFailed, StoreError):
            raise  # the network or the disk: a restart may well help
        except ConfigError:
            raise
        except AgentError as exc:
            # Not paired, a refused token, a damaged identity, a plaintext URL, an
            # unreadable CA file: a restart cannot help, so systemd must not loop.
            raise ConfigError(exc.message, hint=exc.hint) from exc
        signals.attach(agent)
        if on_agent is not None:
            on_agent(agent)
        log.info(
            "flow-agent %s in tenant %s, control plane %s, state %s",
            identity.agent_id,
            identity.tenant,
            identity.url,
            settings.state_dir,
        )
        await agent.serve()
    finally:
        if vault is not None:
            vault.close()
        store.close()
    log.info("stopped")
    return agent.exit_code


__all__ = ["EXIT_CONFIG", "EXIT_CRASH", "Agent", "run_daemon"]
