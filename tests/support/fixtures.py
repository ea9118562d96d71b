"""Fixtures for a conftest to import: the control plane with tenant ``acme``, a paired agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .agent import AgentUnderTest, paired_agent
from .controlplane import Cp, running_cp


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[Cp]:
    async with running_cp(tmp_path / "cp") as handle:
        yield handle


@pytest.fixture
async def agent(tmp_path: Path, cp: Cp) -> AsyncIterator[AgentUnderTest]:
    """An agent paired with tenant ``acme``, not started."""
    async with paired_agent(cp, tmp_path / "agent") as under_test:
        yield under_test
