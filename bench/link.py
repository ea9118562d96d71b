"""Benchmarks of the link: push latency, dispatch, throughput, a fleet's reconnect, memory.

    python bench/link.py            # a few minutes on 2 cores
    python bench/link.py --quick    # small sizes, for CI (well under a minute)

Everything runs on loopback, with the real parts: ``flow-controlplane serve``
as its own process, agents as ``Agent`` objects on this process's event loop
(each its own state directory, Ed25519 key, pairing and websocket), one
``flow-agent run`` process for its memory.  Admin calls go over HTTP to the
admin API, as ``flow-controlplane`` and an operator's scripts make them.

(0) the disk: an fsync'd SQLite commit, as the control plane commits each run
    and each handshake (it moves the figures below on a shared machine);
(1) publish to active: from the admin publish call to the new version being
    active in the agent's store (the agent's sync hook, not a poll);
(2) dispatch to completed: from the admin run request to the control plane
    answering with the run stored as ``completed`` (the request waits for it);
(3) throughput: 1,000 runs dispatched through the admin API, until the agent
    has run them all and every event is acknowledged (its outbox is empty);
(4) reconnect: 200 agents connected, the control plane stopped (SIGTERM: it
    closes their links with 1012) and started again on the same port and data;
    how long until all are back, and how many come back in each second;
(5) memory: VmRSS of the control plane process and of one ``flow-agent run``.

The pieces: ``link_parts.py`` (processes, admin API, in-process agents) and
``link_fleet.py`` (4).

It exits 1, with no table, when something measured did not happen as it
should (a run not completed, an event not acknowledged, an agent not back).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# bench/ is on the path of a script run from it
from bench_report import machine, mib, print_table
from link_fleet import fleet_restart
from link_parts import (
    Admin,
    AgentProcess,
    AppendWatch,
    BenchError,
    CpProcess,
    LocalAgent,
    Report,
    SyncWatch,
    commit_latency,
    kill_quietly,
    ms,
    percentile,
    proc_cpu,
    proc_memory,
    until,
    verdict,
    within,
)

TENANT: Final = "bench"
FLOW_ID: Final = "bench-hello"
# A small flow: one operator with a template, one end.
FLOW: Final[dict[str, Any]] = {
    "format": "flow/v1",
    "id": FLOW_ID,
    "values": {
        "name": {"type": "string", "access": "input", "default": "world"},
        "greeting": {"type": "string", "access": "output"},
    },
    "start": "greet",
    "elements": {
        "greet": {
            "type": "operator",
            "operations": [{"set": "greeting", "to": "Hello, {{ name }}!"}],
            "next": "done",
        },
        "done": {"type": "end"},
    },
}
PUBLISH_TARGET_MS: Final = 50.0
DISPATCH_TARGET_MS: Final = 20.0
IN_FLIGHT: Final = 16  # admin requests in flight while dispatching the throughput runs


@dataclass(frozen=True, slots=True)
class Sizes:
    warmup: int
    publishes: int
    dispatches: int
    runs: int  # (3)
    fleet: int  # (4)
    process_runs: int  # (5), run by the agent process before its RSS is read
    fsync_probes: int  # (0)


FULL: Final = Sizes(
    warmup=10,
    publishes=200,
    dispatches=300,
    runs=1_000,
    fleet=200,
    process_runs=200,
    fsync_probes=200,
)
QUICK: Final = Sizes(
    warmup=2, publishes=10, dispatches=10, runs=100, fleet=20, process_runs=20, fsync_probes=20
)


# -- (1), (2), (3): one agent -----------------------------------------------------------


async def publish_to_active(admin: Admin, watch: SyncWatch, sizes: Sizes, report: Report) -> int:
    samples: list[float] = []
    answered: list[float] = []
    version = 0
    for i in range(sizes.warmup + sizes.publishes):
        start = time.perf_counter()
        answer = await admin.call("POST", f"/admin/v1/tenants/{TENANT}/flows", {"definition": FLOW})
        done = time.perf_counter()
        version = int(answer["version"])
        if answer["pushed_to"] != 1:
            raise BenchError(f"version {version} was pushed to {answer['pushed_to']} agents, not 1")
        active = await watch.wait_for(version)
        if i >= sizes.warmup:
            samples.append(active - start)
            answered.append(done - start)
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    report.add(
        "(1) publish to active, p50",
        ms(p50),
        "ms",
        f"< {PUBLISH_TARGET_MS:.0f}: {verdict(p50 * 1000, PUBLISH_TARGET_MS)}",
        f"{len(samples)} publishes one after the other; admin call answered (p50) "
        f"{ms(percentile(answered, 50))} ms",
    )
    report.add(
        "(1) publish to active, p99",
        ms(p99),
        "ms",
        "",
        f"max {ms(max(samples))} ms; mean {ms(statistics.fmean(samples))} ms",
    )
    return version


async def dispatch_to_completed(
    admin: Admin, agent_id: str, appends: AppendWatch, sizes: Sizes, report: Report
) -> None:
    samples: list[float] = []
    to_agent: list[float] = []  # admin request -> the run's first event in the agent's outbox
    from_agent: list[float] = []  # the run's last event in the outbox -> the answer
    for i in range(sizes.warmup + sizes.dispatches):
        start = time.perf_counter()
        run = await admin.call(
            "POST",
            f"/admin/v1/tenants/{TENANT}/runs",
            {"flow": FLOW_ID, "agent": agent_id, "inputs": {"name": f"n{i}"}, "wait": 30},
        )
        done = time.perf_counter()
        if run["status"] != "completed":
            raise BenchError(f"run {run['run_id']} is {run['status']}, not completed")
        appended = appends.between(start, done)
        if not appended:
            raise BenchError(f"run {run['run_id']} completed with no event in the agent's outbox")
        if i >= sizes.warmup:
            samples.append(done - start)
            to_agent.append(appended[0] - start)
            from_agent.append(done - appended[-1])
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    report.add(
        "(2) dispatch to completed, p50",
        ms(p50),
        "ms",
        f"< {DISPATCH_TARGET_MS:.0f}: {verdict(p50 * 1000, DISPATCH_TARGET_MS)}",
        f"{len(samples)} runs one after the other; admin request until the control plane"
        f" answers with the stored completed run; p50 of its parts: request to the run's"
        f" first event on the agent {ms(percentile(to_agent, 50))} ms, the agent's last event"
        f" to the answer {ms(percentile(from_agent, 50))} ms",
    )
    report.add(
        "(2) dispatch to completed, p99",
        ms(p99),
        "ms",
        "",
        f"max {ms(max(samples))} ms; mean {ms(statistics.fmean(samples))} ms",
    )


async def throughput(
    cp: CpProcess, admin: Admin, local: LocalAgent, sizes: Sizes, report: Report
) -> None:
    agent = local.a
    agent_id = agent.identity.agent_id
    before = agent.store.count_runs_by_status().get("completed", 0)
    gate = asyncio.Semaphore(IN_FLIGHT)
    run_ids: list[str] = []

    async def dispatch(i: int) -> None:
        async with gate:
            run = await admin.call(
                "POST",
                f"/admin/v1/tenants/{TENANT}/runs",
                {"flow": FLOW_ID, "agent": agent_id, "inputs": {"name": f"t{i}"}},
            )
            run_ids.append(run["run_id"])

    def all_acked() -> bool:
        if agent.outbox.depth():
            return False
        return agent.store.count_runs_by_status().get("completed", 0) >= before + sizes.runs

    cpu_cp, cpu_here = proc_cpu(cp.pid), time.process_time()
    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for i in range(sizes.runs):
            group.create_task(dispatch(i))
    dispatched = time.perf_counter()
    await until(all_acked, "every run to complete and every event to be acknowledged", every=0.01)
    empty = time.perf_counter()
    cpu_cp, cpu_here = proc_cpu(cp.pid) - cpu_cp, time.process_time() - cpu_here
    # The control plane's side: every run stored as completed, every event stored.
    runs = await admin.call("GET", f"/admin/v1/tenants/{TENANT}/runs?limit=1000")
    stored = {r["run_id"]: r["status"] for r in runs["runs"]}
    missing = [r for r in run_ids if stored.get(r) != "completed"]
    if len(run_ids) != sizes.runs or missing:
        raise BenchError(f"{len(missing)} of {sizes.runs} runs are not completed at the cp")
    seen = (await admin.agent(TENANT, agent_id))["last_seq"]
    if seen != agent.outbox.last_seq():
        raise BenchError(
            f"the cp stored events up to {seen}, the agent numbered {agent.outbox.last_seq()}"
        )
    elapsed = empty - start
    report.add(
        f"(3) {sizes.runs:,} runs, all events acked",
        f"{sizes.runs / elapsed:,.0f}",
        "runs/s",
        "",
        f"{IN_FLIGHT} admin requests in flight; all dispatched after {dispatched - start:.2f} s,"
        f" outbox empty after {elapsed:.2f} s; {seen:,} events stored at the cp in all",
    )
    report.add(
        "(3) outbox empty after",
        f"{elapsed:.2f}",
        "s",
        "",
        f"from the first admin request; CPU per run: control plane {cpu_cp / sizes.runs * 1000:.2f}"
        f" ms, this process (agent and admin client) {cpu_here / sizes.runs * 1000:.2f} ms",
    )


async def one_agent(cp: CpProcess, admin: Admin, root: Path, sizes: Sizes, report: Report) -> int:
    """(1), (2), (3) against one agent; returns the flow's last published version."""
    await admin.call("POST", "/admin/v1/tenants", {"name": TENANT})
    local = LocalAgent(root / "agent")
    try:
        await local.pair(await admin.token(TENANT))
        agent = local.build()
        watch = SyncWatch(FLOW_ID)
        watch.attach(agent)
        appends = AppendWatch()
        appends.attach(agent)
        async with asyncio.TaskGroup() as group:
            local.start(group)
            try:
                await within(agent.link.ready.wait(), "the agent to connect")
                version = await publish_to_active(admin, watch, sizes, report)
                await dispatch_to_completed(admin, agent.identity.agent_id, appends, sizes, report)
                await throughput(cp, admin, local, sizes, report)
            finally:
                await local.stop()
    finally:
        local.close()
    return version


# -- (5) one agent as a process ------------------------------------------------------------


async def agent_process(
    cp: CpProcess, admin: Admin, root: Path, version: int, sizes: Sizes, report: Report
) -> None:
    proc = AgentProcess(root / "agent-process", log=root / "agent-process.log")
    agent_id = await proc.pair(await admin.token(TENANT))
    await proc.start()
    try:

        async def synced() -> bool:
            seen = await admin.agent(TENANT, agent_id)
            acks = {(a["id"], a["version"]) for a in seen["flow_acks"] if a["ok"]}
            return seen["status"] == "online" and (FLOW_ID, version) in acks

        async def wait_synced() -> None:
            while not await synced():
                await asyncio.sleep(0.05)

        await within(wait_synced(), "the agent process to connect and sync")
        for i in range(sizes.process_runs):
            run = await admin.call(
                "POST",
                f"/admin/v1/tenants/{TENANT}/runs",
                {"flow": FLOW_ID, "agent": agent_id, "inputs": {"name": f"p{i}"}, "wait": 30},
            )
            if run["status"] != "completed":
                raise BenchError(f"run {run['run_id']} of the agent process is {run['status']}")
        rss, peak = proc_memory(proc.pid)
        report.add(
            "(5) RSS, one flow-agent run",
            f"{rss / 2**20:.1f}",
            "MiB",
            "",
            f"after {sizes.process_runs} dispatched runs; peak (VmHWM) {mib(peak)};"
            " local API, store, runner, link",
        )
    finally:
        try:
            await proc.stop()
        finally:
            kill_quietly(proc.proc)


# -- the whole bench ----------------------------------------------------------------------


async def bench(sizes: Sizes, root: Path) -> Report:
    report = Report()
    probe = commit_latency(root, commits=sizes.fsync_probes)
    report.add(
        "(0) SQLite commit, synchronous=FULL",
        ms(percentile(probe, 50)),
        "ms",
        "",
        f"this disk, now: p99 {ms(percentile(probe, 99))} ms over {len(probe)} commits;"
        " the cp makes 3 per dispatched run and 2 per agent handshake",
    )
    cp = CpProcess(root / "cp", log=root / "cp.log")
    try:
        await cp.start()
        admin = Admin(cp.url, cp.admin_key())
        try:
            report = await _against(cp, admin, root, sizes, report)
        finally:
            await admin.close()
    finally:
        try:
            await cp.stop()
        finally:
            kill_quietly(cp.proc)
    return report


async def _against(cp: CpProcess, admin: Admin, root: Path, sizes: Sizes, report: Report) -> Report:
    """Every benchmark but (0), against the running control plane."""
    idle, _ = proc_memory(cp.pid)
    version = await one_agent(cp, admin, root, sizes, report)
    after_runs, _ = proc_memory(cp.pid)
    await agent_process(cp, admin, root, version, sizes, report)
    before, after = await fleet_restart(cp, admin, root, size=sizes.fleet, report=report)
    _, peak = proc_memory(cp.pid)
    report.add(
        "(5) RSS, flow-controlplane serve",
        f"{after / 2**20:.1f}",
        "MiB",
        "",
        f"restarted, {sizes.fleet} agents connected (peak {mib(peak)}), about"
        f" {(after - idle) / sizes.fleet / 1024:,.0f} KiB per agent over idle ({mib(idle)});"
        f" before the restart: after (1)-(3) {mib(after_runs)}, with the fleet {mib(before)}",
    )
    return report


def bench_error(exc: BaseException) -> BenchError | None:
    """The ``BenchError`` in ``exc``, which a task group may have wrapped."""
    if isinstance(exc, BenchError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = bench_error(inner)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("-v", "--verbose", action="store_true", help="the agents' log on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    sizes = QUICK if args.quick else FULL
    root = Path(tempfile.mkdtemp(prefix="flow-agent-bench-link-"))
    try:
        print(machine(), flush=True)
        started = time.perf_counter()
        report = asyncio.run(bench(sizes, root))
        # By benchmark number; (5) gathers the memory figures taken along the way.
        print_table(sorted(report.rows, key=lambda row: row.name[:3]))
        print(f"\n{time.perf_counter() - started:.0f} s in all; {machine().split('; ')[-1]}")
        return 0
    except Exception as exc:
        found = bench_error(exc)
        if found is None:
            raise
        print(f"bench/link.py: {found}", file=sys.stderr)
        for log in sorted(root.glob("*.log")):
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
            print(f"--- last lines of {log.name}:", *tail, sep="\n", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
