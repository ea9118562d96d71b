"""Reconnect delays: capped, fully jittered exponential backoff, as pure code.

``delays()`` is an endless generator of sleep times; ``random`` is injected so
tests are exact.  ``Backoff`` adds the reset rule: a session that stayed
healthy for ``healthy_after`` seconds starts the sequence again from the base.
Nothing here sleeps or reads a clock; the caller measures session length.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterator
from typing import Final

BASE_DELAY: Final = 0.5
MAX_DELAY: Final = 60.0
HEALTHY_AFTER: Final = 30.0


def delays(
    *,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
    factor: float = 2.0,
    random: Callable[[], float] = _random.random,
) -> Iterator[float]:
    """Yield ``uniform(0, min(cap, base * factor**n))`` for n = 0, 1, 2, ...

    Full jitter spreads a fleet that lost the control plane at the same moment.
    """
    if base <= 0 or cap < base or factor < 1:
        raise ValueError("backoff needs base > 0, cap >= base and factor >= 1")
    ceiling = base
    while True:
        yield random() * ceiling
        # Stop growing at the cap so the float never overflows, however long the outage.
        ceiling = min(cap, ceiling * factor)


class Backoff:
    """Stateful wrapper: ``next_delay()`` per failed attempt, ``session_ended()`` after a link."""

    def __init__(
        self,
        *,
        base: float = BASE_DELAY,
        cap: float = MAX_DELAY,
        healthy_after: float = HEALTHY_AFTER,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._base = base
        self._cap = cap
        self._random = random
        self.healthy_after = healthy_after
        self._delays = self._fresh()

    def _fresh(self) -> Iterator[float]:
        return delays(base=self._base, cap=self._cap, random=self._random)

    def next_delay(self) -> float:
        """Seconds to wait before the next connection attempt."""
        return next(self._delays)

    def session_ended(self, *, lasted: float) -> bool:
        """Report how long a session stayed READY; returns True when the delays were reset."""
        if lasted >= self.healthy_after:
            self.reset()
            return True
        return False

    def reset(self) -> None:
        self._delays = self._fresh()


__all__ = ["BASE_DELAY", "HEALTHY_AFTER", "MAX_DELAY", "Backoff", "delays"]
