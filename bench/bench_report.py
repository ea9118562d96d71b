"""Measuring and printing for the benchmarks: clocks, RSS, the table."""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(slots=True)
class Clock:
    """Wall and CPU seconds of one measured stretch.

    CPU seconds of this process are much less disturbed by other load on a
    shared machine than wall seconds; both are reported.
    """

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def measure() -> Iterator[Clock]:
    clock = Clock()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield clock
    finally:
        clock.wall = time.perf_counter() - wall
        clock.cpu = time.process_time() - cpu


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    value: str
    unit: str
    target: str = ""
    detail: str = ""


def rss_bytes() -> int | None:
    """Resident set size from /proc/self/statm; None where there is no /proc."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def spread(clocks: list[Clock], count: int, what: str) -> str:
    """How the repeats varied, and the rate per CPU second of this process."""
    rates = [count / c.wall for c in clocks]
    cpu = statistics.median(count / c.cpu for c in clocks if c.cpu > 0)
    spread = (
        "1 repeat"
        if len(rates) == 1
        else f"median of {len(rates)} repeats ({min(rates):,.0f}-{max(rates):,.0f})"
    )
    return f"{spread}; {cpu:,.0f} {what} per CPU-second"


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    header = Row("benchmark", "result", "unit", "target", "detail")
    table = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in ("name", "value", "unit", "target")]

    def line(r: Row) -> str:
        cells = (
            r.name.ljust(widths[0]),
            r.value.rjust(widths[1]),
            r.unit.ljust(widths[2]),
            r.target.ljust(widths[3]),
            r.detail,
        )
        return "| " + " | ".join(cells) + " |"

    out(line(header))
    out("|" + "|".join("-" * (w + 2) for w in [*widths, len(header.detail)]) + "|")
    for row in rows:
        out(line(row))


def machine() -> str:
    return (
        f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}; "
        f"{platform.system()} {platform.machine()}; {load()}"
    )


def load() -> str:
    """The load average: how busy the machine was while the figures were taken."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"
