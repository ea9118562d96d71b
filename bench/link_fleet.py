"""(4) of ``bench/link.py``: a fleet of agents reconnecting after a control-plane restart.

Each agent is an ``Agent`` on the bench's event loop with its own state
directory, key, pairing and websocket.  The control plane is stopped as
systemd stops it (SIGTERM: every link closed with 1012) and started again on
the same port and data; an agent is back when a new session reached READY.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Final

# bench/ is on the path of a script run from it
from bench_report import rss_bytes
from link_parts import (
    Admin,
    BenchError,
    CpProcess,
    LocalAgent,
    Report,
    ms,
    pair_all,
    percentile,
    proc_memory,
    until,
    verdict,
    within,
)
from websockets.asyncio.client import ClientConnection

from agent.link.client import Link

FLEET_TENANT: Final = "fleet"
BACK_TARGET_S: Final = 10.0
ONE_SECOND_SHARE: Final = 0.25


async def fleet_restart(
    cp: CpProcess, admin: Admin, root: Path, *, size: int, report: Report
) -> tuple[int, int]:
    """(4), and the fleet's memory; returns the cp's RSS with the fleet, before and after."""
    await admin.call("POST", "/admin/v1/tenants", {"name": FLEET_TENANT})
    fleet = [LocalAgent(root / f"fleet-{i:03d}") for i in range(size)]
    rss_before = rss_bytes() or 0
    try:
        await pair_all(fleet, admin, FLEET_TENANT)
        async with asyncio.TaskGroup() as group:
            for local in fleet:
                local.start(group)
            try:
                await until(
                    lambda: all(f.a.link.ready.is_set() for f in fleet), "the fleet to connect"
                )
                cp_rss = await _settled_rss(cp, admin, size)
                per_agent = ((rss_bytes() or 0) - rss_before) / size
                await _restart(cp, admin, fleet, report)
                cp_rss_after = await _settled_rss(cp, admin, size)
                report.add(
                    "(5) RSS, agents in one process",
                    f"{per_agent / 1024:,.0f}",
                    "KiB/agent",
                    "",
                    f"this process's RSS growth over {size} connected Agent objects"
                    " (store, runner, link, websocket each)",
                )
            finally:
                await asyncio.gather(*(f.stop() for f in fleet))
    finally:
        for local in fleet:
            local.close()
    return cp_rss, cp_rss_after


async def _settled_rss(cp: CpProcess, admin: Admin, count: int) -> int:
    online = await _online(admin)
    if online != count:
        raise BenchError(f"the cp lists {online} agents online, not {count}")
    return proc_memory(cp.pid)[0]


async def _online(admin: Admin) -> int:
    return sum(a["status"] == "online" for a in await admin.agents(FLEET_TENANT))


def busiest_second(times: list[float]) -> int:
    """The most of ``times`` (sorted) within any one second."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def tried_by(link: Link, i: int, tried: dict[int, float]) -> None:
    """Note when ``link`` begins each connection attempt (its connect factory, wrapped)."""
    inner = link.open_ws

    def open_ws(url: str) -> Awaitable[ClientConnection]:
        tried[i] = time.perf_counter()
        return inner(url)

    link.open_ws = open_ws


async def _restart(cp: CpProcess, admin: Admin, fleet: list[LocalAgent], report: Report) -> None:
    refused_before = sum(f.a.lifecycle.connect_failures for f in fleet)
    back: dict[int, float] = {}
    tried: dict[int, float] = {}  # when each agent last began to connect
    for i, local in enumerate(fleet):
        tried_by(local.a.link, i, tried)

    async def watch() -> None:
        # A session that reached READY counts as back; 5 ms is far finer than the 1 s bins.
        while len(back) < len(fleet):
            now = time.perf_counter()
            for i, local in enumerate(fleet):
                if i not in back and local.a.link.sessions >= 2:
                    back[i] = now
            await asyncio.sleep(0.005)

    stop = time.perf_counter()
    await cp.stop()
    exited = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        group.create_task(within(watch(), "every agent to reconnect"))
        up = await cp.start()
    if await _online(admin) != len(fleet):
        raise BenchError("the cp does not list the whole fleet online after the restart")
    refused = sum(f.a.lifecycle.connect_failures for f in fleet) - refused_before
    handshakes = [back[i] - tried[i] for i in back]
    # The agents' side alone: when they began the attempts that succeeded.
    attempts = busiest_second(sorted(tried.values())) / len(fleet)
    times = sorted(t - up for t in back.values())
    bins = Counter(math.floor(t) for t in times)
    histogram = " ".join(
        f"{s}s:{bins.get(s, 0)}" for s in range(min(bins), math.floor(times[-1]) + 1)
    )
    share = busiest_second(times) / len(fleet)
    report.add(
        f"(4) {len(fleet)} agents back after restart",
        f"{times[-1]:.2f}",
        "s",
        f"< {BACK_TARGET_S:.0f}: {verdict(times[-1], BACK_TARGET_S)}",
        f"from the restarted cp listening; {up - stop:.2f} s after SIGTERM"
        f" (old process gone after {exited - stop:.2f} s); first back {times[0]:.2f} s,"
        f" median {statistics.median(times):.2f} s; {refused} attempts refused while it was"
        f" down; connect to READY p50 {ms(percentile(handshakes, 50))} ms,"
        f" p99 {ms(percentile(handshakes, 99))} ms",
    )
    report.add(
        "(4) most back in one second",
        f"{share * 100:.0f}",
        "% of agents",
        f"<= {ONE_SECOND_SHARE * 100:.0f}: {'met' if share <= ONE_SECOND_SHARE else 'MISSED'}",
        f"the busiest 1 s window, wherever it starts; back per second since the cp listened:"
        f" {histogram}; the successful attempts began at most {attempts * 100:.0f} % in one"
        " second",
    )


__all__ = ["FLEET_TENANT", "busiest_second", "fleet_restart"]
