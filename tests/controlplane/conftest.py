"""Fixtures: the real control plane on 127.0.0.1:0 with a fake clock, and an admin client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cphelpers import Admin, FakeClock

from controlplane.app import RunningServer, start_server
from controlplane.service import ControlPlane
from controlplane.settings import Settings


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(tmp_path: Path, clock: FakeClock) -> AsyncIterator[RunningServer]:
    settings = Settings(data_dir=tmp_path / "cp", region="eu-1")
    running = await start_server(ControlPlane(settings, clock=clock), host="127.0.0.1", port=0)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def admin(server: RunningServer) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as http:
        yield Admin(http, server.url, server.cp.admin_key)


@pytest.fixture
async def tenant(admin: Admin) -> str:
    await admin.ok("POST", "/admin/v1/tenants", {"name": "acme"})
    return "acme"
