"""Bounded waits: each bound only turns a hang into a failure, it never times anything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

# Guards against a hang; never a timing assertion.
STEP = 15.0


async def until(check: Callable[[], bool], what: str, *, timeout: float = STEP) -> None:
    """Poll ``check`` until it holds, from a coroutine."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def within(waiter: Awaitable[Any], what: str, *, timeout: float = STEP) -> Any:
    """Await ``waiter``; what it returns."""
    try:
        async with asyncio.timeout(timeout):
            return await waiter
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def wait_for(check: Callable[[], bool], what: str = "", *, timeout: float = 20.0) -> float:
    """Poll ``check`` until it holds, blocking; the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or check}")
        time.sleep(0.02)
    return time.monotonic() - start
