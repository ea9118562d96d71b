"""Every Prometheus metric of the agent, and the one runner observer that counts runs.

``Metrics`` owns the registry that ``/metrics`` serves, the run counters by
flow, the element durations by element type and the local API's request
counter; it is also the runner ``Observer`` that keeps those counts.
``AgentMetrics`` adds what only the daemon sees (connector calls, the
link, the lifecycle, schedules...), registered into that same registry::

    metrics = Metrics()
    ops = AgentMetrics(registry=metrics.registry)
    runner observer: chain(outbox_observer, metrics, log_context)

Every name starts with ``flow_agent_``; counters are exposed with the
``_total`` suffix.  docs/operations.md lists them all (a test holds it).

Labels stay bounded: element types and connector types are small fixed
sets, flow ids are the tenant's published flows.  The observer runs inside
every committed step, so it keeps its labelled children in plain dicts
(``Counter.labels`` costs a lock and a tuple check per call) and counts
element durations in plain integers (see ``_Durations``).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import utils as prometheus_utils
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.flow.commands import ConnectorRequest, ConnectorResult
from agent.flow.engine import Visit
from agent.runtime.runner import ConnectorSource, Observer

# An element can be an operator (microseconds) or a page waiting days for a person.
ELEMENT_BUCKETS: Final = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 600, 3600, 86400)
CONNECTOR_BUCKETS: Final = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
LINK_STATES: Final = ("never_connected", "connected", "disconnected", "revoked", "auth_refused")
LIFECYCLE_STATES: Final = ("starting", "ready", "draining")
_ENDED: Final = ("completed", "failed", "cancelled")
# How prometheus_client writes a bucket's bound ("0.001", "10.0"); it is untyped.
_BOUND_TEXT: Final = cast(Callable[[float], str], prometheus_utils.floatToGoString)


class _Durations(Collector):
    """A histogram with one label, counted in plain integers.

    What ``Histogram(...).labels(x).observe(v)`` records (the same buckets,
    sum and count, exposed the same way), for a bisect and two additions
    instead of a label lookup and a lock per bucket: a ten-element run
    observes nine visits.  Updated and collected on the event loop's thread
    only, like everything else the runner does.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: Sequence[float],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = tuple(float(b) for b in buckets)
        # label value -> per-bucket counts (the last one is +Inf), then the sum
        self._series: dict[str, list[float]] = {}
        registry.register(self)

    def observe(self, value: str, amount: float) -> None:
        series = self._series.get(value)
        if series is None:
            series = self._series[value] = [0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, amount)] += 1
        series[-1] += amount

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=[self.label])

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        edges = [*(_BOUND_TEXT(b) for b in self.bounds), "+Inf"]
        for value, series in list(self._series.items()):
            total, buckets = 0.0, []
            for edge, count in zip(edges, series[:-1], strict=True):
                total += count
                buckets.append((edge, total))
            family.add_metric([value], buckets, series[-1])
        yield family


class Metrics:
    """The registry ``/metrics`` serves, the run and request counters; a runner ``Observer``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs_started = Counter(
            "flow_agent_runs_started",
            "Runs started, subflow runs included, by flow id",
            ["flow"],
            registry=r,
        )
        self.runs_ended = {
            status: Counter(
                f"flow_agent_runs_{status}",
                f"Runs that ended {status}, by flow id",
                ["flow"],
                registry=r,
            )
            for status in _ENDED
        }
        self.element_seconds = _Durations(
            "flow_agent_element_duration_seconds",
            "Time from entering an element to leaving it, by element type",
            "type",
            ELEMENT_BUCKETS,
            registry=r,
        )
        self.api_requests = Counter(
            "flow_agent_api_requests",
            "Requests to the local API and player page, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        # Labelled children by label value(s): a dict lookup instead of labels().
        self._started: dict[str, Any] = {}
        self._ended: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    # The Observer protocol of agent.runtime.runner.  It is called inside the
    # runner's transaction; a rolled-back commit may still have been counted,
    # which a counter can live with.
    def committed(
        self,
        *,
        result: dict[str, Any],
        previous: str | None,
        visits: tuple[Visit, ...],
        parent_id: str | None,
    ) -> None:
        status = result.get("status")
        if previous is None:
            flow = str(result.get("flow"))
            child = self._started.get(flow)
            if child is None:
                child = self._started[flow] = self.runs_started.labels(flow=flow)
            child.inc()
        if status in self.runs_ended and status != previous:
            key = (str(status), str(result.get("flow")))
            child = self._ended.get(key)
            if child is None:
                child = self._ended[key] = self.runs_ended[key[0]].labels(flow=key[1])
            child.inc()
        observe = self.element_seconds.observe
        for visit in visits:
            if visit.ended >= visit.started > 0:
                observe(visit.type, visit.ended - visit.started)

    def wrap(self, inner: Observer) -> Observer:
        """An observer that tells ``inner`` first, then counts: a commit that
        ``inner`` refuses (and so rolls back) is not counted."""
        return _Chain((inner, self))

    def request(self, *, route: str, method: str, status: int) -> None:
        key = (route, method, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.api_requests.labels(
                route=route, method=method, status=str(status)
            )
        child.inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class AgentMetrics:
    """The daemon's collectors, in the registry of a ``Metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
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
    __slots__ = ("observers",)

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


__all__ = ["LIFECYCLE_STATES", "LINK_STATES", "AgentMetrics", "Metrics", "chain"]
