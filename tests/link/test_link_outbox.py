"""The durable outbox: numbering, acks, the bound, and the events of real runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.connectors.registry import default_registry
from agent.errors import StoreError
from agent.flow.commands import Answer
from agent.flow.model import parse_flow
from agent.link.dispatch import TimedCatalog
from agent.link.outbox import NewEvent, Outbox, OutboxObserver, minimise
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore

from .linkhelpers import HELLO, PAGE


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "state", synchronous="off")
    try:
        yield opened
    finally:
        opened.close()


def _events(n: int, run_id: str | None = "r1") -> list[NewEvent]:
    return [
        NewEvent("element.entered", run_id, "2026-01-01T00:00:00+00:00", {"i": i}) for i in range(n)
    ]


def test_sequence_numbers_are_contiguous_across_acks_and_reopen(
    tmp_path: Path, store: SqliteStore
) -> None:
    outbox = Outbox(store)
    assert outbox.append(_events(3)) == 3
    assert outbox.ack(2) == 2
    assert outbox.append(_events(2)) == 5
    assert [e.seq for e in outbox.pending(after=0)] == [3, 4, 5]
    assert outbox.ack(5) == 3
    assert outbox.depth() == 0
    store.close()
    reopened = SqliteStore.open(tmp_path / "state", synchronous="off")
    try:
        # Numbering survives an empty outbox and a restart: never max(seq) + 1.
        assert Outbox(reopened).append(_events(1)) == 6
    finally:
        reopened.close()


def test_pending_is_ordered_and_starts_after_the_given_seq(store: SqliteStore) -> None:
    outbox = Outbox(store)
    outbox.append(_events(10))
    got = outbox.pending(after=4, limit=3)
    assert [e.seq for e in got] == [5, 6, 7]
    assert [e.data for e in got] == [{"i": 4}, {"i": 5}, {"i": 6}]


def test_events_roll_back_with_the_transaction_they_joined(store: SqliteStore) -> None:
    outbox = Outbox(store)
    outbox.append(_events(1))
    with pytest.raises(RuntimeError), store.transaction():
        outbox.append(_events(5))
        raise RuntimeError("the step failed")
    assert outbox.last_seq() == 1
    assert outbox.append(_events(1)) == 2  # no hole where the rolled-back events were


def test_the_bound_reports_full_and_skip_to_never_goes_back(store: SqliteStore) -> None:
    outbox = Outbox(store, limit=4)
    outbox.append(_events(3))
    assert not outbox.full()
    outbox.append(_events(1))
    assert outbox.full() and outbox.depth() == 4
    outbox.ack(1)
    assert not outbox.full()
    outbox.skip_to(2)
    assert outbox.last_seq() == 4
    outbox.skip_to(40)
    assert outbox.append(_events(1)) == 41


def test_reset_forgets_everything_and_restarts_at_one(store: SqliteStore) -> None:
    outbox = Outbox(store)
    outbox.append(_events(7))
    outbox.reset()
    assert outbox.depth() == 0 and outbox.last_seq() == 0
    assert outbox.append(_events(1)) == 1


def test_store_errors_name_the_database(store: SqliteStore) -> None:
    outbox = Outbox(store)
    store._conn.execute("DROP TABLE outbox")
    with pytest.raises(StoreError) as failed:
        outbox.append(_events(1))
    assert str(store.path) in failed.value.message


def _result(**changes: Any) -> dict[str, Any]:
    base = {
        "run_id": "r1",
        "flow": "approve",
        "version": 1,
        "status": "waiting",
        "outputs": {"note": "private"},
        "path": ["ask"],
        "waiting": {
            "element": "ask",
            "kind": "input",
            "title": "Note: private",
            "content": "about private",
            "fields": [{"value": "note", "label": "Note", "type": "string", "current": "private"}],
            "outcomes": [{"id": "ok", "label": "ok"}],
        },
        "error": None,
    }
    return {**base, **changes}


def test_minimise_keeps_shape_and_drops_business_data() -> None:
    data = minimise(_result(), report_outputs=False)
    assert "outputs" not in data
    assert "private" not in repr(data)
    assert data["waiting"]["fields"] == [{"value": "note", "label": "Note", "type": "string"}]
    assert data["path"] == ["ask"] and data["status"] == "waiting"
    kept = minimise(_result(), report_outputs=True)
    assert kept["outputs"] == {"note": "private"}
    assert kept["waiting"]["fields"][0]["current"] == "private"


def test_minimise_trims_an_oversized_result() -> None:
    data = minimise(_result(path=["x" * 100] * 5000, waiting=None), report_outputs=True)
    assert data["truncated"] is True and "outputs" not in data
    assert len(data["path"]) == 200 and data["path_trimmed"] == 4800


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _runner(store: SqliteStore, *, report_outputs: bool = False) -> tuple[Runner, Outbox]:
    outbox = Outbox(store)
    wall = _Clock()
    observer = OutboxObserver(outbox, report_outputs=report_outputs, clock=wall)
    catalog = TimedCatalog(store, local=[parse_flow(HELLO), parse_flow(PAGE)])
    runner = Runner(
        store=store, catalog=catalog, connectors=default_registry(), observer=observer, clock=wall
    )
    return runner, outbox


async def test_a_pure_run_reports_start_elements_and_completion_in_order(
    store: SqliteStore,
) -> None:
    runner, outbox = _runner(store)
    await runner.start("hello", {"name": "Ada"}, run_id="run-1")
    events = outbox.pending(after=0)
    assert [(e.kind, e.data.get("element")) for e in events] == [
        ("run.started", None),
        ("element.entered", "greet"),
        ("element.left", "greet"),
        ("element.entered", "done"),
        ("element.left", "done"),
        ("run.completed", None),
    ]
    assert [e.seq for e in events] == list(range(1, 7))
    assert {e.run_id for e in events} == {"run-1"}
    assert all(e.data["duration_ms"] >= 0 for e in events if e.kind == "element.left")
    completed = events[-1].data
    assert completed["status"] == "completed" and completed["path"] == ["greet", "done"]
    assert "outputs" not in completed and "Ada" not in repr(completed)


async def test_a_page_stays_entered_until_answered_then_left_with_its_wait(
    store: SqliteStore,
) -> None:
    runner, outbox = _runner(store)
    clock = runner.clock
    assert isinstance(clock, _Clock)
    await runner.start("approve", {}, run_id="run-2")
    first = outbox.pending(after=0)
    assert [e.kind for e in first] == ["run.started", "element.entered", "run.waiting"]
    waiting = first[-1].data["waiting"]
    assert waiting["element"] == "ask" and "title" not in waiting
    clock.now += 90
    await runner.resume("run-2", answer=Answer(outcome="ok", fields={}, state_token=None))
    later = outbox.pending(after=first[-1].seq)
    assert [(e.kind, e.data.get("element")) for e in later] == [
        ("element.left", "ask"),
        ("element.entered", "done"),
        ("element.left", "done"),
        ("run.completed", None),
    ]
    # The time spent on the page, across the wait, from the wall clock.
    assert later[0].data["duration_ms"] == pytest.approx(90_000, abs=1_000)


async def test_a_cancelled_waiting_run_closes_its_element_and_reports_cancelled(
    store: SqliteStore,
) -> None:
    runner, outbox = _runner(store, report_outputs=True)
    await runner.start("approve", {}, run_id="run-3")
    seen = outbox.last_seq()
    await runner.cancel("run-3")
    after = outbox.pending(after=seen)
    assert [e.kind for e in after] == ["element.left", "run.cancelled"]
    assert after[-1].data["outputs"] == {"note": "secret-ish"}
