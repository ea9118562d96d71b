"""The real control plane (in this process, on 127.0.0.1) for the ops tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from link.linkhelpers import AgentUnderTest, Cp


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[Cp]:
    handle = await Cp(tmp_path / "cp").start()
    await handle.tenant("acme")
    try:
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def agent(tmp_path: Path, cp: Cp) -> AsyncIterator[AgentUnderTest]:
    """An agent paired with tenant ``acme``, not started."""
    under_test = AgentUnderTest(tmp_path / "agent")
    await under_test.pair(await cp.token())
    if under_test.store is not None:  # pairing opened it; start() and doctor open their own
        under_test.store.close()
        under_test.store = None
    try:
        yield under_test
    finally:
        await under_test.stop()
