"""Fixtures of the fault suite: counts, figures, and the real parts of harness.py.

Counts are small by default (CI); ``FAULTS_LONG=1`` (``python -m tests.faults
--long``) selects the large ones.  Each fault point is drawn from a seeded
random generator whose seed is logged, so a failure can be replayed with
``FAULTS_SEED``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import ControlPlaneThread, Daemon, LoopThread, Sink

LONG = os.environ.get("FAULTS_LONG") == "1"


def scale(ci: float, long: float) -> float:
    return long if LONG else ci


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    value = int(os.environ.get("FAULTS_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"[{request.node.nodeid}] FAULTS_SEED={value}")
    return value


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)


Record = Callable[..., None]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """Keep a test's figures: printed, and appended to ``FAULTS_FIGURES`` when set."""

    def keep(case: int, **figures: Any) -> None:
        line = {"case": case, "test": request.node.name, "long": LONG, **figures}
        print("FIGURES", json.dumps(line))
        request.node.user_properties.append(("figures", line))
        target = os.environ.get("FAULTS_FIGURES")
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")

    return keep


@pytest.fixture
def harness() -> Iterator[LoopThread]:
    loop = LoopThread().start()
    try:
        yield loop
    finally:
        loop.stop()


@pytest.fixture
def cp(tmp_path: Path, harness: LoopThread) -> Iterator[ControlPlaneThread]:
    server = ControlPlaneThread(tmp_path / "cp", loop=harness).start()
    server.tenant("acme")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sink(harness: LoopThread) -> Iterator[Sink]:
    target = Sink().start(harness)
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Make ``Daemon``s; every one still running at the end is killed."""
    made: list[Daemon] = []

    def make(name: str = "agent", **kwargs: Any) -> Daemon:
        daemon = Daemon(tmp_path / name, log=tmp_path / f"{name}.log", **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every user can enter, so only the state directory's own modes protect it."""
    base = Path(tempfile.mkdtemp(prefix="fa-modes-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)
