"""Benchmarks of the durable run path, with Prefect 3 measured alongside.

    python bench/engine.py              # about 1-3 minutes on 2 cores
    python bench/engine.py --quick      # a few seconds (CI); Prefect still runs
    python bench/engine.py --no-prefect # skip the Prefect comparison
    python bench/engine.py --profile    # also print a cProfile of (a), one at a time

(a) durable runs per second of a ten-element flow (operators with decimal
    expressions, decisions with comparisons; no connectors), every run
    committed to SQLite (WAL, ``synchronous=normal``), one at a time and 100
    concurrent (``asyncio.gather`` in waves of 100);
(b) element visits per second of one long looping run;
(c) resident memory kept per run waiting on a page (state lives on disk, so
    this should be near zero);
(d) the same ten steps as a Prefect 3 flow, run in-process in a separate
    virtualenv (``bench/.venv-prefect``, created on first use), and the ratio
    of the two rates measured in this same run.

The runtime is wired as the CLI wires it (``agent/cli_local.py``): a
``SqliteStore`` in a fresh temporary state directory, a ``Catalog`` holding
the flow as a local flow, the default connector registry, a ``Runner``.
Rates are medians over repeats: absolute figures on a shared machine are
noisy; ratios measured in one run are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/ is on the path of a script run from it
from bench_flows import LOOP, PAGE, TEN_STEPS
from bench_report import Clock, Row, load, machine, measure, mib, print_table, rss_bytes, spread
from prefect_compare import PrefectReport, run_prefect

from agent.connectors.registry import default_registry
from agent.flow.engine import DEFAULT_MAX_STEPS, Step
from agent.flow.model import parse_flow
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.base import RunRecord
from agent.store.sqlite import SqliteStore

SEQUENTIAL_TARGET = 2_000.0  # runs/s, one at a time
WAITING_TARGET = 2_048.0  # bytes of RSS per waiting run


class BenchError(Exception):
    """A benchmark produced a wrong result: its figure would mean nothing."""


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int  # (a), per repeat
    repeats: int
    wave: int
    loop_visits: int  # (b), about
    loop_repeats: int
    waiting_runs: int  # (c)
    warmup: int
    prefect_runs: int  # (d)
    prefect_default_runs: int


FULL = Sizes(
    runs=3_000,
    repeats=3,
    wave=100,
    loop_visits=9_000,
    loop_repeats=5,
    waiting_runs=10_000,
    warmup=1_000,
    prefect_runs=40,
    prefect_default_runs=3,
)
QUICK = Sizes(
    runs=200,
    repeats=1,
    wave=100,
    loop_visits=2_000,
    loop_repeats=1,
    waiting_runs=1_000,
    warmup=200,
    prefect_runs=10,
    prefect_default_runs=0,
)


@asynccontextmanager
async def agent(
    flow: dict[str, Any], *, max_steps: int = DEFAULT_MAX_STEPS
) -> AsyncIterator[Runner]:
    """A runner over a fresh state directory, wired as the CLI wires it."""
    with tempfile.TemporaryDirectory(prefix="flow-agent-bench-") as tmp:
        store = SqliteStore.open(Path(tmp) / "state", synchronous="normal")
        registry = default_registry()
        try:
            catalog = Catalog(store, max_steps=max_steps, local=[parse_flow(flow)])
            yield Runner(store=store, catalog=catalog, connectors=registry)
        finally:
            await registry.close_all()
            store.close()


def _expect(result: dict[str, Any], status: str) -> None:
    if result["status"] != status:
        raise BenchError(f"a {result['flow']} run ended {result['status']}, not {status}: {result}")


def _amount(i: int) -> int:
    return 500 + i % 1000  # both sides of the discount decision


async def sequential(runner: Runner, runs: int) -> tuple[Clock, int]:
    """Awaiting one start after the other: the time taken and the elements visited."""
    visits = 0
    with measure() as clock:
        for i in range(runs):
            result = await runner.start("bench-ten", {"amount": _amount(i)})
            _expect(result, "completed")
            visits += len(result["path"])
    return clock, visits


async def concurrent(runner: Runner, runs: int, wave: int) -> Clock:
    with measure() as clock:
        for first in range(0, runs, wave):
            batch = range(first, min(first + wave, runs))
            results = await asyncio.gather(
                *(runner.start("bench-ten", {"amount": _amount(i)}) for i in batch)
            )
            for result in results:
                _expect(result, "completed")
    return clock


async def bench_runs(sizes: Sizes, *, profile: bool) -> tuple[list[Row], list[Clock]]:
    seq: list[Clock] = []
    con: list[Clock] = []
    visits = 0
    async with agent(TEN_STEPS) as runner:
        await sequential(runner, sizes.warmup // 4)
        for _ in range(sizes.repeats):
            clock, visits = await sequential(runner, sizes.runs)
            seq.append(clock)
            con.append(await concurrent(runner, sizes.runs, sizes.wave))
        cost = await breakdown(runner, sizes.runs)
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await sequential(runner, sizes.runs)
            profiler.disable()
    median = statistics.median(sizes.runs / c.wall for c in seq)
    rows = [
        Row(
            "(a) runs, one at a time",
            f"{median:,.0f}",
            "runs/s",
            f">= {SEQUENTIAL_TARGET:,.0f}: {'met' if median >= SEQUENTIAL_TARGET else 'MISSED'}",
            f"{sizes.runs:,} runs, {visits / sizes.runs:.2f} visits/run; "
            + spread(seq, sizes.runs, "runs"),
        ),
        Row(
            f"(a) runs, {sizes.wave} concurrent",
            f"{statistics.median(sizes.runs / c.wall for c in con):,.0f}",
            "runs/s",
            "",
            f"{sizes.runs:,} runs, gather in waves of {sizes.wave}; "
            + spread(con, sizes.runs, "runs"),
        ),
        cost,
    ]
    if profile:
        print("cProfile of (a), one at a time, by cumulative time:", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    return rows, seq


def _cpu_us(first: int, runs: int, body: Callable[[int], object]) -> float:
    started = time.process_time()
    for i in range(first, first + runs):
        body(i)
    return (time.process_time() - started) / runs * 1e6


async def breakdown(runner: Runner, runs: int, *, rounds: int = 3) -> Row:
    """CPU microseconds per run of the pieces of ``Runner.start``, each timed apart.

    Every piece is timed in ``rounds`` interleaved loops and the fastest loop
    counts (the least disturbed by other load).  What the runner does beyond
    the pieces (run id, lock, catalog lookup, observer, awaits) is the rest.
    """
    engine = runner.catalog.active("bench-ten")
    if engine is None:
        raise BenchError("the catalog lost the bench flow")
    now = runner.now()
    store = runner.store
    steps: list[Step] = []
    texts: list[str] = []

    def start(i: int) -> None:
        steps.append(engine.start(f"cost-{i}", {"amount": _amount(i)}, now=now, secrets={}))

    def commit(i: int) -> None:
        state = steps[i].state
        record = RunRecord(
            run_id=state.run_id,
            flow_id=state.flow_id,
            version=state.version,
            status=state.status,
            parent_id=None,
            created_at=0.0,
            updated_at=0.0,
            state=texts[i],
        )
        with store.transaction():
            store.insert_run(record)

    pieces: dict[str, list[float]] = {}
    per_round = max(runs // rounds, 1)
    for r in range(rounds):
        first = r * per_round
        timed = {
            "engine.start": _cpu_us(first, per_round, start),
            "state.to_json": _cpu_us(
                first, per_round, lambda i: texts.append(steps[i].state.to_json())
            ),
            "SQLite insert+commit": _cpu_us(first, per_round, commit),
            "engine.result": _cpu_us(first, per_round, lambda i: engine.result(steps[i].state)),
        }
        started = time.process_time()
        for i in range(per_round):
            await runner.start("bench-ten", {"amount": _amount(i)})
        timed["whole"] = (time.process_time() - started) / per_round * 1e6
        for name, us in timed.items():
            pieces.setdefault(name, []).append(us)
    fastest = {name: min(values) for name, values in pieces.items()}
    whole = fastest.pop("whole")
    parts = "; ".join(f"{name} {us:,.0f}" for name, us in fastest.items())
    rest = whole - sum(fastest.values())
    return Row(
        "(a) CPU per run, by piece",
        f"{whole:,.0f}",
        "us/run",
        "",
        f"Runner.start = {parts}; the rest {rest:,.0f} "
        f"(fastest of {rounds} loops of {per_round:,} runs each)",
    )


async def recheck(sizes: Sizes) -> Clock:
    """(a) one at a time once more, right after Prefect ran: load drifts."""
    async with agent(TEN_STEPS) as runner:
        await sequential(runner, sizes.warmup // 4)
        clock, _ = await sequential(runner, sizes.runs)
    return clock


async def bench_loop(sizes: Sizes) -> list[Row]:
    limit = sizes.loop_visits // 2
    expected = 2 * limit + 1
    clocks: list[Clock] = []
    async with agent(LOOP, max_steps=expected + 10) as runner:
        for _ in range(sizes.loop_repeats):
            with measure() as clock:
                result = await runner.start("bench-loop", {"limit": limit})
            _expect(result, "completed")
            if len(result["path"]) != expected:
                raise BenchError(f"the loop visited {len(result['path'])}, not {expected}")
            clocks.append(clock)
    return [
        Row(
            "(b) one looping run",
            f"{statistics.median(expected / c.wall for c in clocks):,.0f}",
            "visits/s",
            "",
            f"1 run of {expected:,} visits (operator + decision loop); "
            + spread(clocks, expected, "visits"),
        )
    ]


async def bench_waiting(sizes: Sizes) -> list[Row]:
    async with agent(PAGE) as runner:
        # Warm the allocator and SQLite's page cache so that the measure sees
        # what each further run keeps, not one-time growth.
        for i in range(sizes.warmup):
            await runner.start("bench-page", {"amount": i})
        gc.collect()
        before, objects_before = rss_bytes(), len(gc.get_objects())
        for i in range(sizes.waiting_runs):
            result = await runner.start("bench-page", {"amount": i})
            if i == 0:
                _expect(result, "waiting")
        gc.collect()
        after, objects_after = rss_bytes(), len(gc.get_objects())
        waiting = runner.store.count_runs_by_status()["waiting"]
    if waiting != sizes.waiting_runs + sizes.warmup:
        raise BenchError(
            f"{waiting} runs are waiting, expected {sizes.waiting_runs + sizes.warmup}"
        )
    objects = (objects_after - objects_before) / sizes.waiting_runs
    if before is None or after is None:
        return [Row("(c) waiting runs, RSS growth", "n/a", "B/run", "", "no /proc/self/statm")]
    per_run = (after - before) / sizes.waiting_runs
    return [
        Row(
            "(c) waiting runs, RSS growth",
            f"{per_run:,.0f}",
            "B/run",
            f"< {WAITING_TARGET:,.0f}: {'met' if per_run < WAITING_TARGET else 'MISSED'}",
            f"{sizes.waiting_runs:,} runs waiting on a page; RSS {mib(before)} -> "
            f"{mib(after)}; gc-tracked objects {objects:+.2f}/run",
        )
    ]


def prefect_rows(
    report: PrefectReport, before: list[Clock], after: Clock, sizes: Sizes
) -> list[Row]:
    """Prefect's figures; the ratio takes ours from before and after Prefect ran."""
    if report.runs_per_s is None:
        return [Row("(d) prefect, one at a time", "skipped", "", "", report.why)]
    rows = [
        Row(
            f"(d) prefect {report.version}, one at a time",
            f"{report.runs_per_s:,.1f}",
            "runs/s",
            "",
            f"{sizes.prefect_runs} flow runs, no @task, ephemeral server, heartbeats off; "
            f"first run (server start) {report.first_run_s:.1f} s"
            + (
                f"; {report.runs_per_cpu_s:,.1f} runs per CPU-second (flow process + server)"
                if report.runs_per_cpu_s
                else ""
            ),
        )
    ]
    if report.default_runs_per_s is not None:
        rows.append(
            Row(
                "(d) prefect, default settings",
                f"{report.default_runs_per_s:,.2f}",
                "runs/s",
                "",
                f"{sizes.prefect_default_runs} flow runs; each joins a heartbeat thread "
                "sleeping in 1 s slices",
            )
        )
    clocks = [*before, after]
    ours = statistics.median(sizes.runs / c.wall for c in clocks)
    detail = (
        "one at a time, prefect with heartbeats off; ours = median of the (a) repeats "
        f"and one more right after prefect ({sizes.runs / after.wall:,.0f} runs/s)"
    )
    if report.runs_per_cpu_s:
        ours_cpu = statistics.median(sizes.runs / c.cpu for c in clocks if c.cpu > 0)
        detail += f"; per CPU-second {ours_cpu / report.runs_per_cpu_s:,.0f} x"
    rows.append(
        Row("(d) ratio, ours / prefect", f"{ours / report.runs_per_s:,.0f}", "x", "", detail)
    )
    return rows


async def ours(sizes: Sizes, *, profile: bool) -> tuple[list[Row], list[Clock]]:
    """Our rows, and the clocks of the (a) one-at-a-time repeats."""
    # Memory first, in a process that has not yet allocated and freed for
    # the other benchmarks: their freed memory returning to the system
    # would make the growth look negative.
    waiting = await bench_waiting(sizes)
    rows, clocks = await bench_runs(sizes, profile=profile)
    rows += await bench_loop(sizes)
    return rows + waiting, clocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--no-prefect", action="store_true", help="skip the Prefect comparison")
    parser.add_argument("--profile", action="store_true", help="cProfile (a) to stderr")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    print(machine())
    started = time.perf_counter()
    try:
        rows, clocks = asyncio.run(ours(sizes, profile=args.profile))
        if not args.no_prefect:
            report = run_prefect(runs=sizes.prefect_runs, default_runs=sizes.prefect_default_runs)
            if report.runs_per_s is None:
                rows += prefect_rows(report, clocks, Clock(), sizes)
            else:
                rows += prefect_rows(report, clocks, asyncio.run(recheck(sizes)), sizes)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print_table(rows)
    print(f"total {time.perf_counter() - started:.0f} s; at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
