"""The bench flow's logic as a Prefect 3 flow, timed in-process.

Run by ``bench/engine.py`` with the interpreter of a separate virtualenv that
has Prefect installed (Prefect is not a dependency of flow-agent).  It must
not import anything from ``agent``.

The flow body is the same ten steps as ``TEN_STEPS`` in ``bench/engine.py``
written as plain Python (no ``@task``): Prefect records each flow run and its
state transitions through its API (the ephemeral server and its SQLite
database), and we time exactly that orchestration overhead.

Usage: python prefect_flow.py RUNS DEFAULT_RUNS
Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from decimal import Decimal
from typing import Any

from prefect import __version__, flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings


@flow(name="bench-ten", persist_result=False, validate_parameters=False)  # type: ignore[untyped-decorator]
def ten_steps(amount: int, fee: str = "2.5") -> dict[str, Any]:
    total = Decimal(amount) * Decimal("1.2") + Decimal(fee)  # calc
    if not total > 0:  # valid
        raise ValueError("amount must be positive")  # invalid
    tax = total * Decimal("0.2")  # tax
    net = total - tax
    tier = "std"
    if net >= 500:  # size
        net = net * Decimal("0.95")  # discount
        tier = "gold"
    score = net / 10 + (5 if tier == "gold" else 0)  # score
    approved, payable = False, None
    if score > 10 and tier.lower() != "blocked":  # check
        approved, payable = True, net  # approve
    return {"approved": approved, "payable": float(payable) if payable is not None else None}


def _children_cpu() -> float | None:
    """CPU seconds used so far by this process's children (the ephemeral API server).

    Read from /proc, so that Prefect's cost per run counts both of its
    processes; None where there is no /proc.
    """
    me, tick, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0.0
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == me:  # ppid; then utime and stime, in clock ticks
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _rate(runs: int) -> tuple[float, float | None]:
    """Runs per wall second, and per CPU second of this process and its server."""
    children = _children_cpu()
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(runs):
        ten_steps(amount=500 + i % 1000)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = _children_cpu()
    if children is None or after is None:
        return runs / wall, None
    return runs / wall, runs / (cpu + after - children)


def main() -> None:
    runs, default_runs = int(sys.argv[1]), int(sys.argv[2])
    started = time.perf_counter()
    first = ten_steps(amount=1000)  # starts the ephemeral server
    first_seconds = time.perf_counter() - started
    # With its default heartbeat setting Prefect joins a heartbeat thread that
    # sleeps in 1 s slices at the end of every sync flow run: a latency floor,
    # not work.  Measured apart so the main figure is not dominated by it.
    default_rate = _rate(default_runs)[0] if default_runs else None
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        rate, cpu_rate = _rate(runs)
    report = {
        "prefect": __version__,
        "runs": runs,
        "runs_per_s": rate,
        "runs_per_cpu_s": cpu_rate,
        "default_runs": default_runs,
        "default_runs_per_s": default_rate,
        "first_run_s": first_seconds,
        "first_result": first,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
