from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import CHILD, FakeClock, MakeRun, Spawn

from agent.store import RunRecord, SqliteStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(state_dir, clock=clock)
    yield opened
    opened.close()


@pytest.fixture
def make_run() -> MakeRun:
    def make(
        run_id: str,
        *,
        created_at: float = 100.0,
        status: str = "running",
        flow_id: str = "demo",
        parent_id: str | None = None,
        wake_at: float | None = None,
        state: str = '{"at": "start"}',
    ) -> RunRecord:
        return RunRecord(
            run_id=run_id,
            flow_id=flow_id,
            version=1,
            status=status,
            parent_id=parent_id,
            created_at=created_at,
            updated_at=created_at,
            state=state,
            wake_at=wake_at,
        )

    return make


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start ``store_child.py`` in a real second Python process."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*prefix, sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
