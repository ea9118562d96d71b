"""Helpers shared by the store tests (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from agent.store import RunRecord

CHILD = Path(__file__).with_name("store_child.py")

MakeRun = Callable[..., RunRecord]
Spawn = Callable[..., "subprocess.Popen[str]"]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
