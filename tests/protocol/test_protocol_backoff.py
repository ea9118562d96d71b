"""Backoff: the exact ceilings with an injected random, jitter range, and the reset rule."""

from __future__ import annotations

from itertools import islice

import pytest

from agent.protocol.backoff import Backoff, delays


def test_ceilings_double_from_half_a_second_up_to_the_cap() -> None:
    got = list(islice(delays(random=lambda: 1.0), 10))
    assert got == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_full_jitter_scales_the_ceiling() -> None:
    assert list(islice(delays(random=lambda: 0.0), 3)) == [0.0, 0.0, 0.0]
    assert list(islice(delays(random=lambda: 0.5, cap=2.0), 4)) == [0.25, 0.5, 1.0, 1.0]


def test_never_overflows_after_a_long_outage() -> None:
    tail = list(islice(delays(random=lambda: 1.0), 5000))[-3:]
    assert tail == [60.0, 60.0, 60.0]


def test_real_random_stays_within_bounds() -> None:
    for n, value in enumerate(islice(delays(), 50)):
        assert 0.0 <= value <= min(60.0, 0.5 * 2**n)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        next(delays(base=0))
    with pytest.raises(ValueError):
        next(delays(base=2, cap=1))


def test_reset_only_after_a_healthy_session() -> None:
    backoff = Backoff(random=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff.session_ended(lasted=29.9) is False
    assert backoff.next_delay() == 8.0
    assert backoff.session_ended(lasted=30.0) is True
    assert backoff.next_delay() == 0.5
