"""The real control plane (in this process, on 127.0.0.1) for the ops tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.agent import AgentUnderTest, paired_agent
from tests.support.controlplane import Cp
from tests.support.fixtures import cp

__all__ = ["agent", "cp"]


@pytest.fixture
async def agent(tmp_path: Path, cp: Cp) -> AsyncIterator[AgentUnderTest]:
    """An agent paired with tenant ``acme``, not started."""
    async with paired_agent(cp, tmp_path / "agent") as under_test:
        if under_test.store is not None:  # pairing opened it; start() and doctor open their own
            under_test.store.close()
            under_test.store = None
        yield under_test
