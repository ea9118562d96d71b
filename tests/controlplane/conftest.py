"""Fixtures: the real control plane on 127.0.0.1:0 with a fake clock, and an admin client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cphelpers import Admin, FakeClock

from controlplane.app import RunningServer
from tests.support.controlplane import running_cp


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(tmp_path: Path, clock: FakeClock) -> AsyncIterator[RunningServer]:
    data = tmp_path / "cp"
    async with running_cp(data, tenant=None, region="eu-1", clock=clock, port=0) as handle:
        assert handle.server is not None
        yield handle.server


@pytest.fixture
async def admin(server: RunningServer) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as http:
        yield Admin(http, server.url, server.cp.admin_key)


@pytest.fixture
async def tenant(admin: Admin) -> str:
    await admin.ok("POST", "/admin/v1/tenants", {"name": "acme"})
    return "acme"
