"""Prometheus metrics of one agent, in a registry of their own.

``Metrics`` is also a runner ``Observer``: given to the ``Runner`` it counts
every run that starts or ends, whatever started it (the API, a schedule, a
timer, the control plane).  ``metrics.wrap(other)`` chains it after another
observer (the link's outbox).  The daemon adds its own collectors to
``metrics.registry``; every name starts with ``flow_agent_``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from agent.flow.engine import Visit
from agent.runtime.runner import Observer

_ENDED = ("completed", "failed", "cancelled")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs_started = Counter(
            "flow_agent_runs_started",
            "Runs started, subflow runs included, by flow id",
            ["flow"],
            registry=self.registry,
        )
        self.runs_ended = {
            status: Counter(
                f"flow_agent_runs_{status}",
                f"Runs that ended {status}, by flow id",
                ["flow"],
                registry=self.registry,
            )
            for status in _ENDED
        }
        self.api_requests = Counter(
            "flow_agent_api_requests",
            "Requests to the local API and player page, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )

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
        flow = str(result.get("flow"))
        status = result.get("status")
        if previous is None:
            self.runs_started.labels(flow=flow).inc()
        if status in self.runs_ended and status != previous:
            self.runs_ended[status].labels(flow=flow).inc()

    def wrap(self, inner: Observer) -> Observer:
        """An observer that tells ``inner`` first, then counts: a commit that
        ``inner`` refuses (and so rolls back) is not counted."""
        return _Chained(inner, self)

    def request(self, *, route: str, method: str, status: int) -> None:
        self.api_requests.labels(route=route, method=method, status=str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Chained:
    def __init__(self, *observers: Observer) -> None:
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
