"""The daemon's Prometheus metrics, in the same registry as the local API's.

The local API (``agent.api.metrics.Metrics``) owns the registry that
``/metrics`` serves and counts runs by flow and API requests.  The daemon
adds what only it sees, registered into that same registry::

    api = Metrics()                               # agent.api.metrics
    ops = AgentMetrics(registry=api.registry)     # this module
    runner observer: chain(outbox_observer, api, ops)

Every name starts with ``flow_agent_``; counters are exposed with the
``_total`` suffix.  docs/operations.md lists them all (a test holds it).

Labels stay bounded: element types and connector types are small fixed
sets, flow ids are the tenant's published flows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent import __version__
from agent.flow.commands import ConnectorRequest, ConnectorResult
from agent.flow.engine import Visit
from agent.runtime.runner import ConnectorSource, Observer

# An element can be an operator (microseconds) or a page waiting days for a person.
ELEMENT_BUCKETS: Final = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 600, 3600, 86400)
CONNECTOR_BUCKETS: Final = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
LINK_STATES: Final = ("never_connected", "connected", "disconnected", "revoked", "auth_refused")
LIFECYCLE_STATES: Final = ("starting", "ready", "draining")


class AgentMetrics:
    """The daemon's collectors; also a runner ``Observer`` (element durations)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.element_seconds = Histogram(
            "flow_agent_element_duration_seconds",
            "Time from entering an element to leaving it, by element type",
            ["type"],
            buckets=ELEMENT_BUCKETS,
            registry=r,
        )
        self.connector_calls = Counter(
            "flow_agent_connector_calls",
            "Connector calls made, by connector type",
            ["connector"],
            registry=r,
        )
        self.connector_errors = Counter(
            "flow_agent_connector_errors",
            "Connector calls that failed (the element took its fault path), by connector type",
            ["connector"],
            registry=r,
        )
        self.connector_seconds = Histogram(
            "flow_agent_connector_call_duration_seconds",
            "Duration of connector calls, retries included, by connector type",
            ["connector"],
            buckets=CONNECTOR_BUCKETS,
            registry=r,
        )
        self.outbox_depth = Gauge(
            "flow_agent_outbox_depth",
            "Events waiting to be acknowledged by the control plane",
            registry=r,
        )
        self.link_state = Gauge(
            "flow_agent_link_state",
            "1 for the link's current state, 0 for the others",
            ["state"],
            registry=r,
        )
        self.link_reconnects = Counter(
            "flow_agent_link_reconnects",
            "Sessions with the control plane opened after the first one",
            registry=r,
        )
        self.link_connect_failures = Counter(
            "flow_agent_link_connect_failures",
            "Attempts to open the link (TCP, TLS, websocket upgrade) that failed",
            registry=r,
        )
        self.flow_syncs = Counter(
            "flow_agent_flow_syncs",
            "Flow and activation frames from the control plane, by result (applied, rejected)",
            ["result"],
            registry=r,
        )
        self.schedule_fires = Counter(
            "flow_agent_schedule_fires",
            "Schedule triggers that fired, by flow id",
            ["flow"],
            registry=r,
        )
        self.runs_in_flight = Gauge(
            "flow_agent_runs_in_flight",
            "Tasks driving runs right now",
            registry=r,
        )
        self.lifecycle = Gauge(
            "flow_agent_lifecycle_state",
            "1 for the daemon's current lifecycle state (starting, ready, draining)",
            ["state"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "flow_agent_event_loop_lag_seconds",
            "How late the watchdog's last wake-up was: time the event loop was blocked",
            registry=r,
        )
        self.config_reloads = Counter(
            "flow_agent_config_reloads",
            "SIGHUP reloads of the configuration, by result (applied, refused)",
            ["result"],
            registry=r,
        )
        self.build_info = Gauge(
            "flow_agent_build_info",
            "Always 1; the agent's version as a label",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        for state in LINK_STATES:
            self.link_state.labels(state=state).set(0)
        for state in LIFECYCLE_STATES:
            self.lifecycle.labels(state=state).set(1 if state == "starting" else 0)
        for result in ("applied", "rejected"):
            self.flow_syncs.labels(result=result)
        for result in ("applied", "refused"):
            self.config_reloads.labels(result=result)

    # -- setters the supervisor calls ------------------------------------------------

    def set_link_state(self, state: str) -> None:
        for name in LINK_STATES:
            self.link_state.labels(state=name).set(1 if name == state else 0)

    def set_lifecycle(self, state: str) -> None:
        for name in LIFECYCLE_STATES:
            self.lifecycle.labels(state=name).set(1 if name == state else 0)

    def schedule_fired(self, flow: str) -> None:
        """For the scheduler: one schedule trigger of ``flow`` fired."""
        self.schedule_fires.labels(flow=flow).inc()

    # -- runner Observer ----------------------------------------------------------------

    def committed(
        self,
        *,
        result: dict[str, Any],
        previous: str | None,
        visits: tuple[Visit, ...],
        parent_id: str | None,
    ) -> None:
        for visit in visits:
            if visit.ended >= visit.started > 0:
                self.element_seconds.labels(type=visit.type).observe(visit.ended - visit.started)

    # -- connectors ---------------------------------------------------------------------

    def connectors(
        self, source: ConnectorSource, *, mono: Callable[[], float] = time.monotonic
    ) -> ConnectorSource:
        """``source`` with every call counted and timed by connector type."""
        return _CountedSource(source, self, mono)


class _CountedSource:
    def __init__(self, inner: ConnectorSource, metrics: AgentMetrics, mono: Callable[[], float]):
        self.inner = inner
        self.metrics = metrics
        self.mono = mono

    def get(self, connector_type: str) -> Any:
        return _Counted(self.inner.get(connector_type), connector_type, self)


class _Counted:
    def __init__(self, inner: Any, connector_type: str, source: _CountedSource) -> None:
        self.inner = inner
        self.connector_type = connector_type
        self.source = source

    async def call(self, request: ConnectorRequest) -> ConnectorResult:
        started = self.source.mono()
        try:
            result: ConnectorResult = await self.inner.call(request)
        except asyncio.CancelledError:
            raise  # a stop or a cancel_run: neither a call made nor an error
        except Exception:
            self._count(started, failed=True)
            raise
        self._count(started, failed=not result.ok)
        return result

    def _count(self, started: float, *, failed: bool) -> None:
        metrics, label = self.source.metrics, self.connector_type
        metrics.connector_calls.labels(connector=label).inc()
        metrics.connector_seconds.labels(connector=label).observe(
            max(self.source.mono() - started, 0.0)
        )
        if failed:
            metrics.connector_errors.labels(connector=label).inc()

    async def close(self) -> None:
        await self.inner.close()


class _Chain:
    def __init__(self, observers: tuple[Observer, ...]) -> None:
        self.observers = observers

    def committed(
        self,
        *,
        result: dict[str, Any],
        previous: str | None,
        visits: tuple[Visit, ...],
        parent_id: str | None,
    ) -> None:
        for observer in self.observers:
            observer.committed(result=result, previous=previous, visits=visits, parent_id=parent_id)


def chain(*observers: Observer) -> Observer:
    """One observer telling each of ``observers`` in order (the first may refuse a commit)."""
    return _Chain(observers)


__all__ = ["LIFECYCLE_STATES", "LINK_STATES", "AgentMetrics", "chain"]
