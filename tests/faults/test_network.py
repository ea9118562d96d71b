"""The link under network faults: cases 12, 13, 14, 15 and 16 of the catalogue.

Real ``flow-agent run`` processes; the reference control plane in a loop
thread; faults from the fault proxy (proxy.py) or from network namespaces
whose veth link is set down (netns.py).
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .checker import check
from .conftest import LONG, Record, scale
from .harness import (
    CHARGE_EFFECTS,
    ControlPlaneThread,
    Daemon,
    LoopThread,
    Sink,
    charge_flow,
    free_port,
    timer_flow,
    wait_for,
)
from .netns import Netns, unavailable
from .proxy import FaultProxy


class Proxied:
    """A control plane reached only through a fault proxy."""

    def __init__(self, tmp: Path, loop: LoopThread, **cp: object) -> None:
        self.loop = loop
        port = free_port()
        self.proxy = loop.call(_start(FaultProxy(port)))
        self.cp = ControlPlaneThread(
            tmp / "cp",
            loop=loop,
            port=port,
            public_url=self.proxy.url,
            **cp,  # type: ignore[arg-type]
        ).start()
        self.cp.tenant("acme")

    def close(self) -> None:
        self.cp.stop()
        self.loop.call(self.proxy.stop())


async def _start(proxy: FaultProxy) -> FaultProxy:
    return await proxy.start()


@pytest.fixture
def proxied(tmp_path: Path, harness: LoopThread) -> Iterator[Callable[..., Proxied]]:
    made: list[Proxied] = []

    def make(**cp: object) -> Proxied:
        made.append(Proxied(tmp_path, harness, **cp))
        return made[-1]

    yield make
    for item in made:
        item.close()


def _pair(cp: ControlPlaneThread, daemon: Daemon, **env: str) -> str:
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token(), **env)
    wait_for(daemon.connected, "the agent to pair and connect", timeout=60)
    return daemon.agent_id()


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_12_control_plane_down_at_boot(
    proxied: Callable[..., Proxied], daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 12. The control plane is unreachable when the agent starts.

    The agent was paired and synced a flow, then stopped; a run of it waits
    on a timer.  Every connection is then reset at once by the proxy.
    Pass: reconnect attempts follow capped, jittered exponential backoff
    (each gap within its ceiling, 0.5 s doubling up to 60 s; not all
    equal); the timer run completes meanwhile; one clear log line says the
    control plane cannot be reached, not one per attempt.
    """
    watch = scale(10.0, 150.0)
    p = proxied()
    p.cp.publish(timer_flow(2.0))
    daemon = daemons()
    _pair(p.cp, daemon)
    wait_for(lambda: bool(daemon.status()["flows"]), "the flow to sync")
    run_id = p.cp.dispatch("nap")
    assert run_id is not None
    wait_for(lambda: bool(daemon.read("SELECT 1 FROM runs WHERE status = 'waiting'")), "a wait")
    assert daemon.terminate() == 0
    p.proxy.refuse = True
    p.proxy.accepted_at.clear()
    daemon.start()
    time.sleep(watch)
    attempts = list(p.proxy.accepted_at)
    (status,) = daemon.read("SELECT status FROM runs WHERE run_id = ?", (run_id,))[0]
    log = daemon.log_text().split("--- start 2", 1)[1]
    assert status == "completed", "the timer must fire without the control plane"
    assert log.count("cannot reach the control plane") == 1, log
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    ceilings = [min(60.0, 0.5 * 2**n) for n in range(len(gaps))]
    slack = 0.5  # the connect and the reset themselves
    assert len(gaps) >= 3
    assert all(g <= c + slack for g, c in zip(gaps, ceilings, strict=True)), (gaps, ceilings)
    assert len({round(g / c, 2) for g, c in zip(gaps, ceilings, strict=True)}) > 1  # jittered
    assert len(attempts) <= 2 + 2 * len(ceilings)  # no storm: far below one a second
    assert daemon.terminate() == 0
    record(
        12, watched_s=watch, attempts=len(attempts), gaps_s=[round(g, 2) for g in gaps], log_lines=1
    )


def test_14_half_open_link_is_detected_and_replaced(
    proxied: Callable[..., Proxied], daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 14. Half-open link: the proxy keeps the socket but forwards nothing.

    Pass: the agent notices within ping_interval + ping_timeout (with the
    defaults 20 s + 20 s; CI uses a 1 s heartbeat, so 2 s), then reconnects.
    """
    heartbeat = 20.0 if LONG else float(os.environ.get("FAULTS_HEARTBEAT", "1.0"))
    env = {} if LONG else {"FLOW_AGENT_HEARTBEAT": str(heartbeat)}
    p = proxied(heartbeat=heartbeat)
    daemon = daemons()
    agent_id = _pair(p.cp, daemon, **env)
    assert p.proxy.freeze() >= 1
    frozen = time.monotonic()
    noticed = wait_for(
        lambda: not daemon.connected(), "the half-open link noticed", timeout=2 * heartbeat + 10
    )
    wait_for(daemon.connected, "a new session", timeout=30)
    wait_for(lambda: p.cp.online(agent_id), "online again at the control plane", timeout=30)
    assert noticed <= 2 * heartbeat + 1.5  # + polling and scheduling on a busy machine
    assert "no pong from the control plane" in daemon.log_text()
    reconnected = time.monotonic() - frozen
    assert daemon.terminate() == 0
    record(
        14,
        heartbeat_s=heartbeat,
        detected_s=round(noticed, 1),
        reconnected_s=round(reconnected, 1),
        bound_s=2 * heartbeat,
    )


def _big_flow(size: int) -> dict[str, object]:
    """A valid flow of about ``size`` bytes: one long label per element."""
    count = max(1, size // 20_000)
    label = "x" * 19_900
    elements: dict[str, object] = {
        f"e{i}": {
            "type": "operator",
            "label": label,
            "operations": [{"add": "n", "by": 1}],
            "next": f"e{i + 1}",
        }
        for i in range(count)
    }
    elements[f"e{count}"] = {"type": "end"}
    values = {"n": {"type": "number", "access": "output", "default": 0}}
    return {"format": "flow/v1", "id": "big", "values": values, "start": "e0", "elements": elements}


def test_15_slow_link_large_flow_download(
    proxied: Callable[..., Proxied], sink: Sink, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 15. Slow link: 150 ms latency each way and a bandwidth cap.

    A flow larger than what the link carries in two heartbeat intervals is
    published (CI: 0.6 MB at 96 KiB/s with a 2 s heartbeat; --long: 3 MB at
    64 KiB/s with the default 20 s).  Pass: the download finishes (no
    cascade of heartbeat timeouts, reconnects and re-sends), and runs
    dispatched over the slow link complete with their effects once.
    """
    heartbeat, size, rate = (20.0, 3_000_000, 64 * 1024) if LONG else (2.0, 600_000, 96 * 1024)
    env = {} if LONG else {"FLOW_AGENT_HEARTBEAT": str(heartbeat)}
    p = proxied(heartbeat=heartbeat)
    p.cp.publish(charge_flow(sink.url, pause=0.05))
    daemon = daemons()
    agent_id = _pair(p.cp, daemon, **env)
    wait_for(lambda: bool(daemon.status()["flows"]), "the small flow to sync")
    for tox in (p.proxy.up, p.proxy.down):
        tox.latency, tox.rate = 0.15, rate
    started = time.monotonic()
    p.cp.publish(_big_flow(size))
    runs = [p.cp.dispatch("charge") for _ in range(3)]
    assert None not in runs
    synced = wait_for(
        lambda: any(f["id"] == "big" for f in daemon.status()["flows"]),
        "the large flow to arrive over the slow link",
        timeout=size / rate * 4 + 60,
    )
    dispatched = [r for r in runs if r is not None]
    wait_for(
        lambda: _all_completed(p.cp, dispatched) and daemon.status()["outbox"]["depth"] == 0,
        "runs completed over the slow link",
        timeout=120,
    )
    sessions = daemon.log_text().count("flow_agent.link: connected to")
    assert sessions == 1, "the slow download cost a reconnect"
    assert daemon.terminate() == 0
    verdict = check(
        cp=p.cp,
        agent_id=agent_id,
        state_dir=daemon.state_dir,
        dispatched=dispatched,
        sink=sink,
        effects_per_run=CHARGE_EFFECTS,
    )
    record(
        15,
        flow_bytes=size,
        rate_bps=rate,
        latency_s=0.15,
        heartbeat_s=heartbeat,
        download_s=round(synced, 1),
        elapsed_s=round(time.monotonic() - started, 1),
        reconnects=sessions - 1,
        **verdict.figures(),
    )


def _all_completed(cp: ControlPlaneThread, runs: list[str]) -> bool:
    marks = ",".join("?" * len(runs))
    sql = f"SELECT count(*) FROM runs WHERE status = 'completed' AND id IN ({marks})"
    return bool(cp.read(sql, runs)[0][0] == len(runs))


def test_16_reset_storm(
    proxied: Callable[..., Proxied], sink: Sink, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 16. Reset storm: the proxy resets every connection every second.

    Runs are dispatched whenever the agent is online (CI: 10 s; --long: 5
    min).  Pass: eventual delivery, no duplicates (checker), the agent's CPU
    below 50 % of one core over the storm, and flat memory (RSS at the end
    within 10 MiB of RSS after the first quarter).
    """
    duration = scale(10.0, 300.0)
    p = proxied(heartbeat=5.0)
    p.cp.publish(charge_flow(sink.url, pause=0.05))
    daemon = daemons()
    agent_id = _pair(p.cp, daemon)
    wait_for(lambda: bool(daemon.status()["flows"]), "the flow to sync")
    dispatched: list[str] = []
    cpu0, t0 = _cpu_seconds(daemon.pid), time.monotonic()
    rss: list[int] = []
    resets = 0
    next_reset = t0 + 1.0
    while (now := time.monotonic()) - t0 < duration:
        if now >= next_reset:
            resets += p.loop.call(_reset(p.proxy))
            next_reset = now + 1.0
            rss.append(_rss(daemon.pid))
        run_id = p.cp.dispatch("charge")
        if run_id is not None:
            dispatched.append(run_id)
        time.sleep(0.2)
    cpu = (_cpu_seconds(daemon.pid) - cpu0) / (time.monotonic() - t0)
    wait_for(
        lambda: _all_completed(p.cp, dispatched) and daemon.status()["outbox"]["depth"] == 0,
        "delivery after the storm",
        timeout=120,
    )
    assert daemon.terminate() == 0
    verdict = check(
        cp=p.cp,
        agent_id=agent_id,
        state_dir=daemon.state_dir,
        dispatched=dispatched,
        sink=sink,
        effects_per_run=CHARGE_EFFECTS,
    )
    baseline = rss[len(rss) // 4]
    assert cpu < 0.5, f"the agent used {cpu:.0%} of a core during the storm"
    assert rss[-1] <= baseline + 10 * 2**20, (baseline, rss[-1])
    record(
        16,
        storm_s=duration,
        resets=resets,
        cpu_share=round(cpu, 3),
        rss_start_mib=round(baseline / 2**20, 1),
        rss_end_mib=round(rss[-1] / 2**20, 1),
        rss_median_mib=round(statistics.median(rss) / 2**20, 1),
        **verdict.figures(),
    )


async def _reset(proxy: FaultProxy) -> int:
    return proxy.reset_all()


NO_NETNS = unavailable()


@pytest.mark.skipif(NO_NETNS is not None, reason=f"partition needs namespaces: {NO_NETNS}")
def test_13_partition(tmp_path: Path, daemons: Callable[..., Daemon], record: Record) -> None:
    """Case 13. A partition: the veth between two namespaces is set down.

    Before it, runs are dispatched that wait on timers ending during it.
    CI: 8 s with a 1 s heartbeat; --long: 5 minutes with the default 20 s.
    Pass: runs continue and complete during the partition, their reports are
    buffered in the outbox, and after the link comes back each is delivered
    once, in order (checker).
    """
    length = scale(8.0, 300.0)
    heartbeat = 20.0 if LONG else 1.0
    net = Netns.create()
    loop = LoopThread(name="cp-netns", netns=net.cp).start()
    cp = ControlPlaneThread(
        tmp_path / "cp", loop=loop, host=net.cp_addr, port=8700, heartbeat=heartbeat
    )
    try:
        cp.start()
        cp.tenant("acme")
        flows = {f"nap{i}": length * f for i, f in enumerate((0.2, 0.5, 0.8), start=1)}
        for flow_id, seconds in flows.items():
            cp.publish(timer_flow(seconds, flow_id=flow_id))
        env = {"FLOW_AGENT_ALLOW_PLAINTEXT": "true"}
        if not LONG:
            env["FLOW_AGENT_HEARTBEAT"] = str(heartbeat)
        daemon = daemons(prefix=net.exec_prefix(), env=env)
        agent_id = _pair(cp, daemon)
        wait_for(lambda: len(daemon.status()["flows"]) == len(flows), "the flows to sync")
        dispatched = [cp.dispatch(f) for f in flows for _ in range(3)]
        assert None not in dispatched
        runs = [r for r in dispatched if r is not None]
        wait_for(
            lambda: len(daemon.read("SELECT 1 FROM runs WHERE status = 'waiting'")) == 9,
            "the runs to wait",
        )
        net.down()
        cut = time.monotonic()
        noticed = wait_for(
            lambda: not daemon.connected(), "the partition noticed", timeout=2 * heartbeat + 10
        )
        time.sleep(max(0.0, length - (time.monotonic() - cut)))
        done = daemon.read("SELECT count(*) FROM runs WHERE status = 'completed'")[0][0]
        buffered = daemon.status()["outbox"]["depth"]
        assert done == 9, "runs must go on during the partition"
        assert buffered > 0
        at_cp = cp.read("SELECT count(*) FROM events WHERE kind = 'run.completed'")[0][0]
        assert at_cp == 0
        net.up()
        healed = wait_for(
            lambda: _all_completed(cp, runs) and daemon.status()["outbox"]["depth"] == 0,
            "delivery after the partition",
            timeout=120 + 3 * heartbeat,
        )
        assert daemon.terminate() == 0
        verdict = check(cp=cp, agent_id=agent_id, state_dir=daemon.state_dir, dispatched=runs)
        record(
            13,
            partition_s=length,
            heartbeat_s=heartbeat,
            noticed_s=round(noticed, 1),
            buffered_events=buffered,
            delivered_after_heal_s=round(healed, 1),
            **verdict.figures(),
        )
    finally:
        cp.stop()
        loop.stop()
        net.close()
