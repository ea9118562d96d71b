"""Reconnects are spread: a restarting control plane must not get its whole fleet back at once.

``spread_delay`` is checked exactly with an injected random and statistically
with a seeded one; the link is checked against the real control plane,
restarted, with the delays it chose read from its log (no clock involved).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from agent.daemon import Agent
from agent.identity import load_private_key
from agent.link.client import RECONNECT_SPREAD, Link, LinkOptions, spread_delay
from agent.link.transport import link_url, open_link
from agent.protocol.backoff import Backoff, delays

from .linkhelpers import AgentUnderTest, Cp, until, within


def test_a_narrow_draw_is_drawn_again_over_the_spread_a_wide_one_is_kept() -> None:
    assert spread_delay(0.3, spread=8.0, random=lambda: 0.5) == 4.0
    assert spread_delay(0.0, spread=8.0, random=lambda: 0.0) == 0.0
    assert spread_delay(8.0, spread=8.0, random=lambda: 0.0) == 8.0
    assert spread_delay(20.0, spread=8.0, random=lambda: 0.0) == 20.0


def test_reconnects_are_uniform_over_the_wider_of_spread_and_ceiling() -> None:
    rng = random.Random(20261126)
    draws = 40_000

    # The first backoff window (0.5 s) is far narrower than the spread: uniform over 0-8 s.
    narrow = [
        spread_delay(next(delays(random=rng.random)), spread=RECONNECT_SPREAD, random=rng.random)
        for _ in range(draws)
    ]
    assert max(narrow) < RECONNECT_SPREAD
    per_second = Counter(int(d) for d in narrow)
    assert sorted(per_second) == list(range(int(RECONNECT_SPREAD)))
    for count in per_second.values():
        assert abs(count / draws - 1 / RECONNECT_SPREAD) < 0.01

    # A backoff ceiling of 32 s is wider: still uniform over 0-32 s, a quarter below 8 s.
    wide = [spread_delay(rng.random() * 32, spread=8.0, random=rng.random) for _ in range(draws)]
    assert max(wide) < 32
    assert abs(sum(d < 8 for d in wide) / draws - 0.25) < 0.01
    assert abs(sum(d >= 24 for d in wide) / draws - 0.25) < 0.01


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
        random=lambda: 0.5,  # every spread draw is half the spread: 0.2 s
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
                await until(lambda: len(_delays(caplog)) >= 2, "a refused reconnect")
                await cp.start()
                await until(lambda: link.sessions == 2, "the second session")
                # After a session, every attempt waited the spread draw, not 0 s.
                assert set(_delays(caplog)) == {"0.20"}
            finally:
                link.stop()
    finally:
        await under_test.stop()
