"""One owner of the run metrics: ``agent.metrics.Metrics`` counts runs and elements.

The element durations are counted in plain integers, not through
``Histogram.labels().observe()``; Prometheus must not see the difference.
"""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.api import Metrics
from agent.connectors.registry import ConnectorRegistry
from agent.link.dispatch import TimedCatalog
from agent.logs import LogContextObserver
from agent.metrics import ELEMENT_BUCKETS, AgentMetrics, _Durations, chain
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render()[0].decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_durations_are_exposed_as_prometheus_client_exposes_a_histogram() -> None:
    ours, theirs = CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)
    durations = _Durations("x_seconds", "How long", "type", ELEMENT_BUCKETS, registry=ours)
    histogram = Histogram(
        "x_seconds", "How long", ["type"], buckets=ELEMENT_BUCKETS, registry=theirs
    )
    picks = random.Random(7)
    # Values on the bounds count in their bucket (le), past the last in +Inf.
    values = [*ELEMENT_BUCKETS, 0.0, 1e-7, 10**6, *(picks.expovariate(2) for _ in range(500))]
    for value in values:
        kind = picks.choice(["operator", "page", "message"])
        durations.observe(kind, value)
        histogram.labels(type=kind).observe(value)
    theirs_lines = [
        line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line
    ]
    assert sorted(generate_latest(ours).decode().splitlines()) == sorted(theirs_lines)


async def test_runs_and_elements_are_counted_once_beside_the_other_observers(
    store: SqliteStore, registry: ConnectorRegistry
) -> None:
    metrics = Metrics()
    AgentMetrics(registry=metrics.registry)  # the daemon's collectors share the registry
    catalog = TimedCatalog(store)  # engines that time their visits
    # Alone, and chained as the daemon chains it (with the log context).
    for observer in (metrics, chain(metrics, LogContextObserver())):
        runner = Runner(store=store, catalog=catalog, connectors=registry, observer=observer)
        assert (await runner.start("double", {"n": 2}))["status"] == "completed"
        assert (await runner.start("fails", {}))["status"] == "failed"
    got = _samples(metrics)
    assert got[("flow_agent_runs_started_total", (("flow", "double"),))] == 2
    assert got[("flow_agent_runs_completed_total", (("flow", "double"),))] == 2
    assert got[("flow_agent_runs_failed_total", (("flow", "fails"),))] == 2
    operators = ("flow_agent_element_duration_seconds_count", (("type", "operator"),))
    ends = ("flow_agent_element_duration_seconds_count", (("type", "end"),))
    assert got[operators] == 2  # one operator per run of double
    assert got[ends] == 4  # one end per run, both flows
    assert (
        got[("flow_agent_element_duration_seconds_bucket", (("le", "+Inf"), ("type", "end")))] == 4
    )


def test_requests_are_counted_by_route_method_and_status() -> None:
    metrics = Metrics()
    for status in (201, 201, 404):
        metrics.request(route="/api/v1/flows/{flow_id}/runs", method="POST", status=status)
    got = _samples(metrics)
    key = "flow_agent_api_requests_total"
    route = ("route", "/api/v1/flows/{flow_id}/runs")
    assert got[(key, (("method", "POST"), route, ("status", "201")))] == 2
    assert got[(key, (("method", "POST"), route, ("status", "404")))] == 1
