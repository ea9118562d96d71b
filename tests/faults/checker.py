"""A Jepsen-style checker: after a fault, prove nothing acknowledged was lost
and no side effect happened twice.

Three ledgers are read, each from its own durable source, never from the
agent's memory:

* the agent's outbox (``outbox_seq.last`` and the rows still pending in its
  SQLite file): every seq below the first pending one was acknowledged by
  the control plane, and the agent deleted it on that acknowledgement;
* the control plane's stored events, ``(agent_id, seq)`` rows, and its runs
  (a run is acknowledged once the agent accepted its ``start_run``);
* the connector target's ledger (``Sink``): every request with its
  Idempotency-Key, and the effect applied once per key.

``check`` states the invariants:

1. The agent's database passes ``integrity_check``.
2. The control plane holds seqs ``1..n`` for the agent, each once, in order,
   and ``n`` is the last seq the agent numbered: every acknowledged event
   is there, and so is every event the agent committed (after it drained).
3. Every run the control plane dispatched is stored by the agent, has ended
   with the expected status, and the control plane saw one ``run.started``
   and one terminal event for it.
4. Every run made exactly as many effects at the sink as it visited
   connector elements: a retry after a crash reused its Idempotency-Key;
   no key belongs to a run nobody dispatched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import ControlPlaneThread, Sink, read_db

TERMINAL = ("run.completed", "run.failed", "run.cancelled")


@dataclass
class Verdict:
    runs: int = 0
    events: int = 0
    acked_by_cp: int = 0
    effects: int = 0
    requests: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(1 for p in self.problems if p.startswith("lost"))

    @property
    def duplicated(self) -> int:
        return sum(1 for p in self.problems if p.startswith("duplicate"))

    def figures(self) -> dict[str, int]:
        return {
            "runs": self.runs,
            "events": self.events,
            "effects": self.effects,
            "repeated_requests_absorbed": self.requests - self.effects,
            "lost": self.lost,
            "duplicated": self.duplicated,
        }


def check(
    *,
    cp: ControlPlaneThread,
    agent_id: str,
    state_dir: Path,
    dispatched: Iterable[str],
    sink: Sink | None = None,
    effects_per_run: int | Callable[[str], int] = 0,
    status: str = "completed",
) -> Verdict:
    """Check the invariants; raise AssertionError naming every violation."""
    verdict = Verdict()
    db = state_dir / "state.db"
    runs = sorted(set(dispatched))
    verdict.runs = len(runs)

    (integrity,) = read_db(db, "PRAGMA integrity_check")[0]
    if integrity != "ok":
        verdict.problems.append(f"corrupt: agent database fails integrity_check: {integrity}")

    # 2. Events: the agent's numbering against the control plane's rows.
    (last,) = read_db(db, "SELECT last FROM outbox_seq WHERE id = 1")[0]
    (first_pending,) = read_db(db, "SELECT min(seq) FROM outbox")[0]
    acked_upto = last if first_pending is None else first_pending - 1
    rows = cp.read(
        "SELECT seq, kind, run_id FROM events WHERE agent_id = ? ORDER BY rowid", (agent_id,)
    )
    seqs = [r[0] for r in rows]
    verdict.events = len(seqs)
    verdict.acked_by_cp = acked_upto
    for seq, n in Counter(seqs).items():
        if n > 1:
            verdict.problems.append(f"duplicate event: seq {seq} stored {n} times")
    if seqs != sorted(seqs):
        verdict.problems.append("reordered: events were stored out of seq order")
    have = set(seqs)
    missing = [s for s in range(1, acked_upto + 1) if s not in have]
    if missing:
        verdict.problems.append(f"lost events acknowledged to the agent: seqs {missing[:20]}")
    if first_pending is not None:
        verdict.problems.append(f"undelivered: seqs {first_pending}..{last} still in the outbox")
    elif max(have, default=0) != last:
        verdict.problems.append(
            f"lost events: control plane has up to {max(have, default=0)}"
            f", the agent numbered {last}"
        )
    if any(s > last for s in have):
        verdict.problems.append(f"invented events: the control plane has seqs above {last}")

    # 3. Runs: stored by the agent, ended, reported once.
    kinds: dict[str, Counter[str]] = {}
    for _, kind, run_id in rows:
        if run_id is not None:
            kinds.setdefault(run_id, Counter())[kind] += 1
    local = dict(read_db(db, "SELECT run_id, status FROM runs WHERE parent_id IS NULL"))
    remote = dict(cp.read("SELECT id, status FROM runs WHERE agent_id = ?", (agent_id,)))
    for run_id in runs:
        if run_id not in local:
            verdict.problems.append(f"lost run: {run_id} was dispatched but the agent has none")
            continue
        if local[run_id] != status:
            verdict.problems.append(f"unfinished run: {run_id} is {local[run_id]} at the agent")
        if remote.get(run_id) != status:
            verdict.problems.append(f"unreported run: {run_id} is {remote.get(run_id)} at the CP")
        seen = kinds.get(run_id, Counter())
        if seen["run.started"] != 1:
            verdict.problems.append(
                f"{'duplicate' if seen['run.started'] > 1 else 'lost'} run.started for {run_id}"
                f" ({seen['run.started']})"
            )
        ends = sum(seen[k] for k in TERMINAL)
        if ends != 1:
            verdict.problems.append(
                f"{'duplicate' if ends > 1 else 'lost'} terminal event for {run_id} ({ends})"
            )

    # 4. Effects at the connector target.
    if sink is not None:
        verdict.requests = len(sink.requests)
        verdict.effects = len(sink.effects)
        expected = effects_per_run
        wanted = set(runs)
        for key in sink.effects:
            owner = key.split(":", 1)[0].split(".", 1)[0]
            if owner not in wanted:
                verdict.problems.append(f"stray effect: key {key!r} belongs to no dispatched run")
        for run_id in runs:
            n = expected(run_id) if callable(expected) else expected
            got = len(sink.keys_of(run_id))
            if got > n:
                verdict.problems.append(f"duplicate effect: run {run_id} made {got}, expected {n}")
            elif got < n and local.get(run_id) == status:
                verdict.problems.append(f"lost effect: run {run_id} made {got}, expected {n}")
    if verdict.problems:
        shown = "\n  ".join(verdict.problems[:40])
        raise AssertionError(f"{len(verdict.problems)} violation(s):\n  {shown}")
    return verdict


def event_kinds(cp: ControlPlaneThread, agent_id: str) -> list[tuple[int, str, Any]]:
    return [
        (r[0], r[1], r[2])
        for r in cp.read(
            "SELECT seq, kind, run_id FROM events WHERE agent_id = ? ORDER BY seq", (agent_id,)
        )
    ]
