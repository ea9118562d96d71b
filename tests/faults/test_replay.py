"""Case 11: executions recorded by earlier releases resume on this one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.store.migrations import MIGRATIONS

from .conftest import Record
from .harness import LoopThread, Sink
from .replay import FIXTURES, replay

RECORDINGS = sorted(FIXTURES.glob("replay-*.sql"))


def test_there_is_a_recording() -> None:
    """A release records its executions (python -m tests.faults.replay)."""
    assert RECORDINGS


@pytest.mark.parametrize("dump", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_11_recorded_executions_resume_with_identical_outcomes(
    dump: Path, tmp_path: Path, harness: LoopThread, sink: Sink, record: Record
) -> None:
    """Case 11. Replay: runs stopped at a page, a due timer, a connector call in
    flight, a subflow's page and a finished run, recorded by an earlier release
    (its state database as SQL and the outcomes it reached), are resumed here.

    Pass: the database is migrated to this release's schema, and every run
    ends exactly as on the release that recorded it (status, outputs, path,
    error); the interrupted connector call is repeated with its own
    Idempotency-Key, once.
    """
    expected = json.loads(dump.with_suffix(".json").read_text())
    assert expected["schema"] <= len(MIGRATIONS)
    got = asyncio.run(replay(dump.read_text(), tmp_path / "state", sink.url))
    assert got == expected["runs"]
    assert [r.key for r in sink.requests] == ["call:1"]
    record(
        11,
        recording=dump.stem,
        schema_from=expected["schema"],
        schema_to=len(MIGRATIONS),
        runs=len(got),
        identical=len(got),
    )
