"""Reconnects are spread: a restarting control plane must not get its whole fleet back at once.

``spread_delays`` is checked exactly with an injected random, and for a
fleet with a seeded one (attempt times computed, no clock); the link is
checked against the real control plane, restarted, with the delays it chose
read from its log.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.daemon import Agent
from agent.identity import load_private_key
from agent.link.client import RECONNECT_SPREAD, Link, LinkOptions, spread_delays
from agent.link.transport import link_url, open_link
from agent.protocol.backoff import Backoff, delays

from .linkhelpers import AgentUnderTest, Cp, until, within

FLEET = 200


def test_the_phase_is_drawn_once_then_the_steps_double_up_to_the_cap() -> None:
    draws = iter([0.25, 0.9, 0.9])
    got = spread_delays(spread=8.0, cap=60.0, random=lambda: next(draws))
    assert [next(got) for _ in range(7)] == [2.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def _back(schedule: Iterator[float], down_for: float) -> float:
    """When an agent is back: its first attempt once the control plane listens again."""
    at = 0.0
    while at < down_for:
        at += next(schedule)
    return at - down_for


def _busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


@pytest.mark.parametrize("down_for", [0.2, 1.5, 3.0, 6.0])
def test_a_fleet_comes_back_spread_over_the_spread_however_long_the_outage(
    down_for: float,
) -> None:
    rng = random.Random(20261126)

    def spread() -> Iterator[float]:
        return spread_delays(spread=RECONNECT_SPREAD, random=rng.random)

    back = [_back(spread(), down_for) for _ in range(FLEET)]
    assert max(back) < RECONNECT_SPREAD
    assert _busiest_second(back) <= FLEET // 4


def test_full_jitter_alone_brings_the_fleet_back_in_a_herd() -> None:
    """Why the spread exists: the backoff's first windows are 0.5 s and 1 s."""
    rng = random.Random(20261126)
    jitter: Callable[[], Iterator[float]] = lambda: delays(random=rng.random)  # noqa: E731
    back = [_back(jitter(), 0.2) for _ in range(FLEET)]
    assert _busiest_second(back) > FLEET // 2


def _delays(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        m.group(1)
        for r in caplog.records
        if (m := re.fullmatch(r"reconnecting in (\S+) s", r.getMessage()))
    ]


async def test_the_link_spreads_reconnects_only_once_it_has_been_connected(
    tmp_path: Path, cp: Cp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flow_agent.link")
    under_test = AgentUnderTest(tmp_path / "agent")
    identity = await under_test.pair(await cp.token())
    # The agent's own parts, around a link whose random numbers are chosen here.
    agent = Agent(
        under_test.settings,
        store=under_test.open_store(),
        identity=identity,
        key=load_private_key(under_test.settings.state_dir),
    )
    link = Link(
        identity=identity,
        key=agent.link.key,
        store=agent.store,
        outbox=agent.outbox,
        sync=agent.sync,
        dispatcher=agent.dispatcher,
        options=LinkOptions(url=link_url(identity.url), reconnect_spread=0.4),
        open_ws=lambda url: open_link(
            url, ca_file=None, max_frame_bytes=1024 * 1024, open_timeout=5.0
        ),
        backoff=Backoff(random=lambda: 0.0),  # every backoff draw is 0 s
        random=lambda: 0.5,  # the phase is half the spread: 0.2 s
    )
    try:
        await cp.stop()
        async with asyncio.TaskGroup() as group:
            group.create_task(link.run())
            try:
                # A first start is not spread: it retries at the backoff's pace.
                await until(lambda: len(_delays(caplog)) >= 2, "two refused first attempts")
                assert set(_delays(caplog)) == {"0.00"}
                await cp.start()
                await within(link.ready.wait(), "the first session")
                caplog.clear()

                await cp.stop()  # closes the link with 1012, as a restart does
                await until(lambda: len(_delays(caplog)) >= 3, "two refused reconnects")
                await cp.start()
                await until(lambda: link.sessions == 2, "the second session")
                # After a session: the phase, then the spread, doubling; never the 0 s draws.
                assert _delays(caplog)[:3] == ["0.20", "0.40", "0.80"]
            finally:
                link.stop()
    finally:
        await under_test.stop()
