"""Case 23: a poison message or run must not take the agent down, nor loop for ever."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from agent.protocol.frames import StartRun

from .conftest import Record
from .harness import ControlPlaneThread, Daemon, timer_flow, wait_for
from .test_messages import _send


def _poison(daemon: Daemon, run_id: str) -> None:
    """Damage a stored run the way a bug or a bad disk block would."""
    conn = sqlite3.connect(daemon.state_dir / "state.db")
    with conn:
        conn.execute('UPDATE runs SET state = \'{"not": "a run\' WHERE run_id = ?', (run_id,))
    conn.close()


def test_23_poison_messages_are_refused_and_the_agent_stays_up(
    cp: ControlPlaneThread, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 23, messages. start_run frames that cannot be run (an unknown flow, invalid
    inputs, a malformed run id, a run id of a subflow) sent again and again.

    Pass: each is refused with a reason every time, the link stays up (one
    session) and so does the agent; a good run still completes.
    """
    cp.publish(timer_flow(0.01))
    daemon = daemons()
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
    wait_for(daemon.connected, "connect", timeout=60)
    agent_id = daemon.agent_id()
    wait_for(lambda: bool(daemon.status()["flows"]), "flow synced")
    poison = [
        StartRun(run_id="p1", flow="nowhere", inputs={}, version=None),
        StartRun(run_id="p2", flow="nap", inputs={"n": "not a number"}, version=None),
        StartRun(run_id="bad id!", flow="nap", inputs={}, version=None),
        StartRun(run_id="p3", flow="nap", inputs={}, version=99),
    ]
    for _ in range(5):
        _send(cp, agent_id, poison)
    wait_for(lambda: daemon.log_text().count("refused (") >= 5 * len(poison), "the refusals")
    good = cp.dispatch("nap")
    assert good is not None
    wait_for(
        lambda: cp.read("SELECT status FROM runs WHERE id = ?", (good,))[0][0] == "completed",
        "a good run",
    )
    assert daemon.log_text().count("flow_agent.link: connected to") == 1
    assert "Traceback" not in daemon.log_text()
    assert daemon.terminate() == 0
    record(23, poison_frames=5 * len(poison), refused=5 * len(poison), sessions=1)


def test_23_a_poison_run_is_quarantined_after_a_few_tries(
    cp: ControlPlaneThread, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 23, runs. A waiting run whose stored state is damaged, its timer due.

    Pass: the agent stays up and tries it once (the damage is permanent),
    then sets it aside: failed, with a clear error, reported to the control
    plane, its state kept; no traceback, no retry on every timer scan.
    """
    cp.publish(timer_flow(1.0))
    daemon = daemons()
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
    wait_for(daemon.connected, "connect", timeout=60)
    wait_for(lambda: bool(daemon.status()["flows"]), "flow synced")
    run_id = cp.dispatch("nap")
    assert run_id is not None
    wait_for(
        lambda: (
            daemon.read("SELECT status FROM runs WHERE run_id = ?", (run_id,)) == [("waiting",)]
        ),
        "the run to wait",
    )
    assert daemon.terminate() == 0
    _poison(daemon, run_id)
    daemon.start()
    wait_for(daemon.connected, "connect again", timeout=60)
    wait_for(
        lambda: cp.read("SELECT status FROM runs WHERE id = ?", (run_id,))[0][0] == "failed",
        "the run set aside and reported",
    )
    time.sleep(3.0)  # thirty timer scans
    log = daemon.log_text().split("--- start 2", 1)[1]
    alive = daemon.alive()
    assert daemon.terminate() == 0
    assert alive
    assert log.count(f"run {run_id} set aside") == 1
    assert "Traceback" not in log
    assert daemon.read("SELECT status, state FROM runs WHERE run_id = ?", (run_id,)) == [
        ("failed", '{"not": "a run')
    ]
    result = cp.read("SELECT result FROM runs WHERE id = ?", (run_id,))[0][0]
    assert "stored state is damaged" in result
    record(23, poison_run_tries=1, set_aside="failed, reported, state kept")
