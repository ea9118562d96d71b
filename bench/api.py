"""Benchmarks of the local API: runs started over HTTP, and many runs waiting on a page.

    python bench/api.py               # about a minute on 2 cores
    python bench/api.py --quick       # small sizes, a few seconds (CI)
    python bench/api.py --profile     # also a cProfile of the server during (a) at 16 clients
    python bench/api.py --aiohttp-client   # drive it with aiohttp's client, as before

(a) runs per second through ``POST /api/v1/flows/bench-ten/runs`` (the
    ten-element flow of ``bench_flows.py``; the answer comes when the run has
    completed) with 1, 16 and 64 concurrent clients, and the p50/p99 latency;
(b) 10,000 runs started through the API, all waiting on a page: the server's
    RSS growth; then all of them resumed through the API
    (``POST /api/v1/runs/{id}/resume``): the time taken and the RSS after;
(c) where the server's CPU goes per run: an HTTP request through the API's
    middlewares to a route that does nothing (in the server), and
    ``Runner.start`` in this process bare, with the outbox observer only, and
    with the daemon's whole observer chain (fastest of interleaved loops).

The server is a separate process (``--serve``, started by this script): the
API app on 127.0.0.1, over a runner wired as ``flow-agent run`` wires it (a
``SqliteStore`` with ``synchronous=normal``, the outbox observer that
records every run's events for the control plane, the metrics, the log
context, the outbox_full check before each new run).  No control plane
drains the outbox: events pile up in the store, as they do while the agent
is offline.  The clients are tasks in this process, each with its own
keep-alive connection, speaking HTTP/1.1 through ``bench_http.LeanClient``
(about a quarter of the CPU per request that aiohttp's client takes on the
same two cores the server runs on; ``--aiohttp-client`` uses that one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import ClientSession, TCPConnector

# bench/ is on the path of a script run from it
from bench_flows import PAGE, TEN_STEPS
from bench_http import HttpError, LeanClient
from bench_report import Row, load, machine, mib, print_table

RUNS_TARGET: Final = 1_000.0  # runs/s at 16 clients
P99_TARGET: Final = 0.050  # seconds, at 16 clients
RSS_TARGET: Final = 30 * 2**20  # bytes of growth for 10,000 waiting runs
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
TICKS: Final = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A request did not do what it should: the figures would mean nothing."""


@dataclass(slots=True)
class ClientKind:
    # aiohttp's client instead of bench_http's (--aiohttp-client): the way
    # the figures before 2026-11-26 19:30 UTC were taken.
    aiohttp: bool = False


CLIENT: Final = ClientKind()


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int  # (a), per client level and repeat
    repeats: int
    warmup: int
    waiting: int  # (b)


FULL = Sizes(runs=3_000, repeats=3, warmup=1_000, waiting=10_000)
QUICK = Sizes(runs=200, repeats=1, warmup=100, waiting=500)
CLIENTS: Final = (1, 16, 64)


# -- the server process ---------------------------------------------------------------


async def serve(state_dir: Path) -> None:
    """The API over a runner wired like the daemon's; prints its URL, runs until SIGTERM."""
    from aiohttp import web

    from agent.api import Metrics, create_app
    from agent.api.serve import ApiServer
    from agent.connectors.registry import default_registry
    from agent.flow.model import canonical_json, parse_flow
    from agent.link.dispatch import TimedCatalog
    from agent.link.outbox import Outbox, OutboxObserver
    from agent.logs import LogContextObserver
    from agent.metrics import AgentMetrics, chain
    from agent.runtime.runner import Runner
    from agent.store.base import FlowRecord
    from agent.store.sqlite import SqliteStore

    store = SqliteStore.open(state_dir, synchronous="normal")
    for doc in (TEN_STEPS, PAGE):
        flow = parse_flow(doc)
        store.put_flow(
            FlowRecord(
                flow_id=flow.id,
                version=flow.version,
                definition=canonical_json(doc),
                sha256=flow.sha256,
                active=True,
                signature=None,
                received_at=time.time(),
            )
        )
    registry = default_registry()
    metrics = Metrics()
    ops = AgentMetrics(registry=metrics.registry)
    outbox = Outbox(store, limit=10**9)
    runner = Runner(
        store=store,
        catalog=TimedCatalog(store),
        connectors=ops.connectors(registry),
        observer=chain(OutboxObserver(outbox), metrics, LogContextObserver()),
    )
    # As the daemon's _accepting: every new run first asks whether the outbox is full.
    app = create_app(
        runner=runner,
        metrics=metrics,
        accepting=lambda: "outbox_full" if outbox.full() else True,
    )
    # CPU time, not wall time: on a busy machine a wall-clock profile charges
    # the waits for a core to whatever call happened to be running.
    profiler = cProfile.Profile(time.process_time)

    # The same store and catalog, without HTTP: what Runner.start costs here.
    direct = {
        "bare": Runner(store=store, catalog=runner.catalog, connectors=registry),
        "outbox": Runner(
            store=store,
            catalog=runner.catalog,
            connectors=registry,
            observer=OutboxObserver(outbox),
        ),
        "daemon": runner,
    }

    async def control(request: web.Request) -> web.Response:
        what = request.match_info["what"]
        answer: dict[str, float] = {}
        if what == "gc":
            gc.collect()
        elif what == "profile-start":
            profiler.enable()
        elif what == "profile-stop":
            profiler.disable()
            profiler.dump_stats(request.query["to"])
        elif what == "pieces":
            count = int(request.query["count"])
            for name, each in direct.items():
                began = time.process_time()
                for i in range(count):
                    result = await each.start("bench-ten", {"amount": 500 + i % 1000})
                    if result["status"] != "completed":
                        raise web.HTTPInternalServerError(text=json.dumps(result))
                answer[name] = (time.process_time() - began) / count * 1e6
        return web.json_response(answer)

    app.router.add_post("/bench/{what}", control)
    server = ApiServer(app, host="127.0.0.1", port=0, grace=5.0)
    url = await server.start()
    print(url, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()
    await registry.close_all()
    store.close()


# -- measuring from outside -----------------------------------------------------------


class Server:
    def __init__(self, state_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(state_dir)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise BenchError(f"the server did not start: {self.url!r}")

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


@dataclass(slots=True)
class Load:
    wall: float
    server_cpu: float
    client_cpu: float
    latencies: list[float]
    results: list[dict[str, Any]]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(
    server: Server,
    clients: int,
    requests: list[tuple[str, dict[str, Any]]],
    *,
    expect: Callable[[int, dict[str, Any]], bool],
) -> Load:
    """POST every (path, body) of ``requests`` with ``clients`` concurrent connections."""
    latencies: list[float] = []
    results: list[dict[str, Any]] = []
    queue = iter(requests)

    def check(path: str, status: int, answer: Any, began: float) -> None:
        latencies.append(time.perf_counter() - began)
        if not isinstance(answer, dict) or not expect(status, answer):
            raise BenchError(f"POST {path} answered {status}: {answer}")
        results.append(answer)

    async def lean() -> None:
        connection = await LeanClient.connect(server.url)
        try:
            for path, body in queue:
                began = time.perf_counter()
                status, answer = await connection.post_json(path, body)
                check(path, status, answer, began)
        finally:
            await connection.close()

    async def through_aiohttp(session: ClientSession) -> None:
        headers = {"Content-Type": "application/json"}
        for path, body in queue:
            data = json.dumps(body)
            began = time.perf_counter()
            async with session.post(server.url + path, data=data, headers=headers) as response:
                answer = await response.json()
                status = response.status
            check(path, status, answer, began)

    async with contextlib.AsyncExitStack() as stack:
        if CLIENT.aiohttp:
            session = await stack.enter_async_context(
                ClientSession(connector=TCPConnector(limit=clients))
            )
        cpu, server_cpu, wall = time.process_time(), server.cpu(), time.perf_counter()
        if CLIENT.aiohttp:
            await asyncio.gather(*(through_aiohttp(session) for _ in range(clients)))
        else:
            await asyncio.gather(*(lean() for _ in range(clients)))
        wall = time.perf_counter() - wall
        return Load(
            wall=wall,
            server_cpu=server.cpu() - server_cpu,
            client_cpu=time.process_time() - cpu,
            latencies=latencies,
            results=results,
        )


def _completed(status: int, answer: dict[str, Any]) -> bool:
    return status in (200, 201) and answer.get("status") == "completed"


def _waiting(status: int, answer: dict[str, Any]) -> bool:
    return status == 201 and answer.get("status") == "waiting"


def _starts(count: int, flow: str = "bench-ten") -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"/api/v1/flows/{flow}/runs", {"inputs": {"amount": 500 + i % 1000}}) for i in range(count)
    ]


async def control(server: Server, what: str, **query: str) -> dict[str, float]:
    from aiohttp import ClientSession, ClientTimeout

    async with (
        ClientSession(timeout=ClientTimeout(total=600)) as session,
        session.post(f"{server.url}/bench/{what}", params=query) as response,
    ):
        response.raise_for_status()
        answer: dict[str, float] = await response.json()
        return answer


async def bench_runs(
    server: Server, sizes: Sizes, profile_to: Path | None
) -> tuple[list[Row], dict[int, Load]]:
    rows: list[Row] = []
    best: dict[int, Load] = {}
    for clients in CLIENTS:
        loads = []
        for repeat in range(sizes.repeats):
            profiling = profile_to is not None and clients == 16 and repeat == 0
            if profiling:
                await control(server, "profile-start")
            loads.append(await drive(server, clients, _starts(sizes.runs), expect=_completed))
            if profiling:
                await control(server, "profile-stop", to=str(profile_to))
        loads.sort(key=lambda item: item.rate)
        median = loads[len(loads) // 2]
        best[clients] = median
        rates = [item.rate for item in loads]
        spread = (
            "1 repeat"
            if len(rates) == 1
            else f"median of {len(rates)} repeats ({min(rates):,.0f}-{max(rates):,.0f})"
        )
        server_us = median.server_cpu / len(median.latencies) * 1e6
        client_us = median.client_cpu / len(median.latencies) * 1e6
        target = ""
        if clients == 16:
            met = median.rate >= RUNS_TARGET
            target = f">= {RUNS_TARGET:,.0f}: {'met' if met else 'MISSED'}"
        rows.append(
            Row(
                f"(a) POST runs, {clients} client{'s' if clients > 1 else ''}",
                f"{median.rate:,.0f}",
                "runs/s",
                target,
                f"{sizes.runs:,} runs of bench-ten; {spread}; server CPU {server_us:,.0f} us/run,"
                f" client CPU {client_us:,.0f} us/run",
            )
        )
        p99_target = ""
        if clients == 16:
            met = median.quantile(0.99) < P99_TARGET
            p99_target = f"p99 < {P99_TARGET * 1000:.0f}: {'met' if met else 'MISSED'}"
        rows.append(
            Row(
                f"(a) latency, {clients} client{'s' if clients > 1 else ''}",
                f"{median.quantile(0.5) * 1000:.1f} / {median.quantile(0.99) * 1000:.1f}",
                "ms p50/p99",
                p99_target,
                f"max {max(median.latencies) * 1000:.1f} ms",
            )
        )
    return rows, best


async def bench_waiting(server: Server, sizes: Sizes) -> list[Row]:
    # Warm up the page flow's whole path (start, page, resume) before the baseline.
    warm = await drive(server, 16, _starts(sizes.warmup, "bench-page"), expect=_waiting)
    await drive(server, 16, _resumes(warm.results), expect=_completed)
    await control(server, "gc")
    before = server.rss()
    started = await drive(server, 16, _starts(sizes.waiting, "bench-page"), expect=_waiting)
    await control(server, "gc")
    waiting = server.rss()
    resumed = await drive(server, 16, _resumes(started.results), expect=_completed)
    await control(server, "gc")
    after = server.rss()
    growth = waiting - before
    full = sizes.waiting == FULL.waiting
    target = ""
    if full:
        target = f"< {RSS_TARGET / 2**20:.0f} MiB: {'met' if growth < RSS_TARGET else 'MISSED'}"
    return [
        Row(
            f"(b) {sizes.waiting:,} runs waiting, RSS growth",
            f"{growth / 2**20:.1f}",
            "MiB",
            target,
            f"server RSS {mib(before)} -> {mib(waiting)} ({growth / sizes.waiting:,.0f} B/run);"
            f" started in {started.wall:.1f} s ({started.rate:,.0f} runs/s, 16 clients)",
        ),
        Row(
            f"(b) {sizes.waiting:,} runs resumed through the API",
            f"{resumed.wall:.1f}",
            "s",
            "",
            f"{resumed.rate:,.0f} resumes/s, 16 clients; p50/p99"
            f" {resumed.quantile(0.5) * 1000:.1f}/{resumed.quantile(0.99) * 1000:.1f} ms;"
            f" server RSS after {mib(after)}",
        ),
    ]


def _resumes(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            f"/api/v1/runs/{result['run_id']}/resume",
            {
                "outcome": "ok",
                "fields": {"note": "fine"},
                "state_token": result["waiting"]["state_token"],
            },
        )
        for result in results
    ]


def print_profile(path: Path) -> None:
    """The server's profile during (a) at 16 clients, to stderr."""
    for order in ("cumulative", "tottime"):
        print(f"--- server cProfile during (a) at 16 clients, by {order} ---", file=sys.stderr)
        pstats.Stats(str(path), stream=sys.stderr).sort_stats(order).print_stats(30)


async def bench_pieces(server: Server, sizes: Sizes) -> Row:
    """The server's CPU per run, by piece, all measured in the server process.

    Three rounds, each piece measured once per round, the lowest of each kept:
    measured side by side, they are disturbed alike by other load.
    """
    count = max(sizes.runs // 3, 100)
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = min(best.get(name, float("inf")), value)

    for _ in range(3):
        api = await drive(server, 16, _starts(count), expect=_completed)
        keep("api", api.server_cpu / count * 1e6)
        noop = await drive(server, 16, [("/bench/noop", {})] * count, expect=lambda *_: True)
        keep("http", noop.server_cpu / count * 1e6)
        for name, value in (await control(server, "pieces", count=str(count))).items():
            keep(name, value)
    rest = best["api"] - best["http"] - best["daemon"]
    return Row(
        "(c) server CPU per run, by piece",
        f"{best['api']:,.0f}",
        "us/run",
        "",
        f"HTTP and the API's middlewares {best['http']:,.0f} (16 clients on a route doing"
        f" nothing); Runner.start without HTTP: bare {best['bare']:,.0f}, + outbox"
        f" observer {best['outbox'] - best['bare']:,.0f}, + metrics and log context"
        f" {best['daemon'] - best['outbox']:,.0f}; the route's own work and the rest"
        f" {rest:,.0f} (lowest of 3 rounds of {count:,} each)",
    )


async def main_async(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    CLIENT.aiohttp = args.aiohttp_client
    print(machine())
    with tempfile.TemporaryDirectory(prefix="flow-agent-bench-api-") as tmp:
        server = Server(Path(tmp) / "state")
        profile_to = Path(tmp) / "server.prof" if args.profile else None
        try:
            # The memory bench first, in a server that has not yet run thousands of runs.
            waiting_rows = await bench_waiting(server, sizes)
            await drive(server, 16, _starts(sizes.warmup), expect=_completed)
            run_rows, _ = await bench_runs(server, sizes, profile_to)
            piece_row = await bench_pieces(server, sizes)
        finally:
            server.stop()
        if profile_to is not None:
            print_profile(profile_to)
    print_table([*run_rows, piece_row, *waiting_rows])
    print(f"after: {load()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--profile", action="store_true", help="cProfile the server during (a)")
    parser.add_argument(
        "--aiohttp-client",
        action="store_true",
        help="drive the server with aiohttp's client (as before) instead of the lean one",
    )
    parser.add_argument("--serve", metavar="STATE_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(Path(args.serve)))
        return 0
    try:
        return asyncio.run(main_async(args))
    except (BenchError, HttpError) as exc:
        print(f"bench/api.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
