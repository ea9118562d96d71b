"""Durability under SIGKILL: cases 1, 2, 3 and 8 of the catalogue.

Every test runs real ``flow-agent run`` processes against the reference
control plane and a real HTTP sink, kills them with SIGKILL at seeded random
or chosen points, and ends with the checker (checker.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from .checker import check
from .conftest import Record, scale
from .harness import (
    CHARGE_EFFECTS,
    ROOT,
    ControlPlaneThread,
    Daemon,
    LoopThread,
    Sink,
    SinkRequest,
    agent_env,
    charge_flow,
    wait_for,
)
from .proxy import FaultProxy


def _start_paired(cp: ControlPlaneThread, daemon: Daemon) -> str:
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
    wait_for(daemon.connected, "the agent to pair and connect", timeout=60)
    return daemon.agent_id()


def _settle(cp: ControlPlaneThread, daemon: Daemon, runs: list[str], *, timeout: float) -> None:
    """Restart if needed; wait until every run is completed at the CP and the outbox drained."""
    if not daemon.alive():
        daemon.start()
    wait_for(daemon.connected, "the agent to connect", timeout=60)
    marks = ",".join("?" * len(runs))

    def done() -> bool:
        sql = f"SELECT count(*) FROM runs WHERE status = 'completed' AND id IN ({marks})"
        rows = cp.read(sql, runs)
        return bool(rows[0][0] == len(runs) and daemon.status()["outbox"]["depth"] == 0)

    wait_for(done, f"{len(runs)} runs completed and reported", timeout=timeout)


def test_01_random_sigkill_during_runs(
    cp: ControlPlaneThread,
    sink: Sink,
    daemons: Callable[..., Daemon],
    rng: random.Random,
    record: Record,
) -> None:
    """Case 1. Random SIGKILL during flows, N times (5 in CI, 200 with --long).

    Each round: start the agent, dispatch 1-3 runs of a flow with two
    connector calls around a durable timer, SIGKILL it after a random
    0-1.2 s.  Pass: nothing lost (every dispatched run completes, every
    event reaches the control plane), each acknowledged step once (one
    run.started and one run.completed per run, seqs 1..n once and in
    order, one effect per connector visit at the sink), integrity_check ok,
    and runs resume after every kill.
    """
    kills = int(scale(5, 200))
    cp.publish(charge_flow(sink.url, pause=0.3))
    daemon = daemons()
    agent_id = _start_paired(cp, daemon)
    wait_for(lambda: bool(daemon.status()["flows"]), "the flow to sync")
    dispatched: list[str] = []
    started = time.monotonic()
    for _ in range(kills):
        if not daemon.alive():
            daemon.start()
        wait_for(lambda: cp.online(agent_id) and daemon.connected(), "a reconnect", timeout=60)
        for _ in range(rng.randint(1, 3)):
            run_id = cp.dispatch("charge")
            if run_id is not None:
                dispatched.append(run_id)
        time.sleep(rng.uniform(0.0, 1.2))
        daemon.kill()
    _settle(cp, daemon, dispatched, timeout=120 + len(dispatched))
    assert daemon.terminate() == 0, daemon.log_text()[-2000:]
    verdict = check(
        cp=cp,
        agent_id=agent_id,
        state_dir=daemon.state_dir,
        dispatched=dispatched,
        sink=sink,
        effects_per_run=CHARGE_EFFECTS,
    )
    assert "Traceback" not in daemon.log_text()
    record(1, sigkills=daemon.kills, seconds=round(time.monotonic() - started), **verdict.figures())


def test_02_kill_after_the_http_call_before_the_commit(
    cp: ControlPlaneThread, sink: Sink, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 2. The sink SIGKILLs the agent after applying a call, before answering.

    The effect happened; the agent never learned it, so its commit of the
    result never happened.  Pass: on restart the call is retried with the
    same Idempotency-Key, the sink shows one effect per visit, the run
    completes once.
    """
    rounds = int(scale(3, 20))
    cp.publish(charge_flow(sink.url, pause=0.05))
    daemon = daemons()
    agent_id = _start_paired(cp, daemon)
    wait_for(lambda: bool(daemon.status()["flows"]), "the flow to sync")
    killed: set[str] = set()

    def kill_on_first_sight(req: SinkRequest) -> None:
        if req.key not in killed:
            killed.add(req.key)
            os.killpg(daemon.pid, signal.SIGKILL)

    sink.hook = kill_on_first_sight
    dispatched: list[str] = []
    for _ in range(rounds):
        wait_for(lambda: cp.online(agent_id) and daemon.connected(), "the agent online", timeout=60)
        run_id = cp.dispatch("charge")
        assert run_id is not None
        dispatched.append(run_id)
        for _visit in range(CHARGE_EFFECTS):  # each connector visit kills the agent once
            wait_for(lambda: not daemon.alive(), "the sink to kill the agent", timeout=60)
            daemon.kill()
            daemon.start()
    _settle(cp, daemon, dispatched, timeout=120)
    assert daemon.terminate() == 0
    verdict = check(
        cp=cp,
        agent_id=agent_id,
        state_dir=daemon.state_dir,
        dispatched=dispatched,
        sink=sink,
        effects_per_run=CHARGE_EFFECTS,
    )
    repeats = [k for k in sink.effects if sum(r.key == k for r in sink.requests) > 1]
    assert len(repeats) == len(killed) == rounds * CHARGE_EFFECTS  # every killed call was retried
    record(2, kills=len(killed), **verdict.figures())


def test_03_kill_after_the_commit_before_the_report(
    tmp_path: os.PathLike[str],
    harness: LoopThread,
    sink: Sink,
    daemons: Callable[..., Daemon],
    record: Record,
) -> None:
    """Case 3. Kill after commit, before report (and after report, before the ack).

    A fault proxy between agent and control plane first holds everything the
    agent sends: runs commit locally, their events stay in the outbox; SIGKILL.
    Then it drops what the control plane sends: events are stored there but
    the acks never arrive; SIGKILL.  Pass: the outbox re-sends, the control
    plane sees each (agent, seq) once and in order, each run reported once.
    """
    from pathlib import Path

    port = harness.call(_free())
    proxy = harness.call(FaultProxy(port).start())
    cp = ControlPlaneThread(Path(tmp_path) / "cp", loop=harness, port=port, public_url=proxy.url)
    cp.start()
    try:
        cp.tenant("acme")
        cp.publish(charge_flow(sink.url, pause=0.05))
        daemon = daemons()
        agent_id = _start_paired(cp, daemon)
        wait_for(lambda: bool(daemon.status()["flows"]), "the flow to sync")
        dispatched: list[str] = []
        for mode in ("hold", "drop"):
            if not daemon.alive():
                daemon.start()
            wait_for(lambda: cp.online(agent_id) and daemon.connected(), "online", timeout=60)
            ids = [cp.dispatch("charge") for _ in range(3)]
            runs = [r for r in ids if r is not None]
            assert len(runs) == 3
            dispatched += runs
            if mode == "hold":  # from now on nothing the agent sends arrives
                proxy.up.mode = "hold"
                wait_for(lambda r=runs: _completed_locally(daemon, r), "runs completed locally")
            else:  # the agent's reports arrive, the acks of them do not
                wait_for(lambda r=runs: _stored_locally(daemon, r), "runs accepted")
                proxy.down.mode = "drop"
                # (the sender stops after 8 unacknowledged batches: some reports arrive)
                wait_for(lambda r=runs: _completed_locally(daemon, r), "runs completed locally")
                wait_for(lambda r=runs: _reported(cp, r), "reports stored at the CP")
            daemon.kill()
            harness.call(_reset(proxy))
            # Either way the agent still holds those events as unacknowledged.
            assert daemon.status()["outbox"]["depth"] > 0
        _settle(cp, daemon, dispatched, timeout=120)
        assert daemon.terminate() == 0
        verdict = check(
            cp=cp,
            agent_id=agent_id,
            state_dir=daemon.state_dir,
            dispatched=dispatched,
            sink=sink,
            effects_per_run=CHARGE_EFFECTS,
        )
        record(3, **verdict.figures())
    finally:
        cp.stop()
        harness.call(proxy.stop())


async def _free() -> int:
    from .harness import free_port

    return free_port()


async def _reset(proxy: FaultProxy) -> None:
    proxy.reset_all()
    proxy.up.mode = proxy.down.mode = "pass"


def _stored_locally(daemon: Daemon, runs: list[str]) -> bool:
    marks = ",".join("?" * len(runs))
    rows = daemon.read(f"SELECT count(*) FROM runs WHERE run_id IN ({marks})", runs)
    return bool(rows[0][0] == len(runs))


def _reported(cp: ControlPlaneThread, runs: list[str]) -> bool:
    marks = ",".join("?" * len(runs))
    rows = cp.read(f"SELECT count(DISTINCT run_id) FROM events WHERE run_id IN ({marks})", runs)
    return bool(rows[0][0] == len(runs))


def _completed_locally(daemon: Daemon, runs: list[str]) -> bool:
    marks = ",".join("?" * len(runs))
    sql = f"SELECT count(*) FROM runs WHERE status = 'completed' AND run_id IN ({marks})"
    rows = daemon.read(sql, runs)
    return bool(rows[0][0] == len(runs))


def test_08_a_second_agent_on_the_same_state_directory(
    cp: ControlPlaneThread, sink: Sink, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 8. A second ``flow-agent run`` on a state directory in use.

    The first agent is inside a connector call (the sink holds the answer).
    Pass: the second refuses at once, saying the directory is in use by the
    first one's pid, exits non-zero without a traceback, and no step runs
    twice: the sink saw the call once, the run completes once.
    """
    cp.publish(charge_flow(sink.url, pause=0.05))
    first = daemons()
    agent_id = _start_paired(cp, first)
    wait_for(lambda: bool(first.status()["flows"]), "the flow to sync")
    sink.stall = True
    run_id = cp.dispatch("charge")
    assert run_id is not None
    wait_for(lambda: len(sink.requests) == 1, "the first call")
    second = subprocess.run(
        first.command(), capture_output=True, text=True, timeout=60, cwd=ROOT, env=agent_env()
    )
    assert second.returncode != 0
    assert f"in use by another flow-agent process (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    sink.release()
    _settle(cp, first, [run_id], timeout=60)
    assert first.terminate() == 0
    verdict = check(
        cp=cp,
        agent_id=agent_id,
        state_dir=first.state_dir,
        dispatched=[run_id],
        sink=sink,
        effects_per_run=CHARGE_EFFECTS,
    )
    assert len(sink.requests) == CHARGE_EFFECTS
    record(8, second_exit=second.returncode, **verdict.figures())


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run with pytest")
