"""``bench/link.py --quick`` runs against real processes and prints every row.

No figure is asserted: timings on a shared machine mean nothing in a test.
The bench checks what it measures (every run completed at the control plane,
every event acknowledged, every agent back and listed online) and exits 1
when something did not happen, so a zero exit says the link did its job.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "link.py"
ROWS = (
    r"\(0\) SQLite commit, synchronous=FULL",
    r"\(1\) publish to active, p50",
    r"\(1\) publish to active, p99",
    r"\(2\) dispatch to completed, p50",
    r"\(2\) dispatch to completed, p99",
    r"\(3\) [\d,]+ runs, all events acked",
    r"\(3\) outbox empty after",
    r"\(4\) \d+ agents back after restart",
    r"\(4\) most back in one second",
    r"\(5\) RSS, one flow-agent run",
    r"\(5\) RSS, agents in one process",
    r"\(5\) RSS, flow-controlplane serve",
)


def test_quick_link_bench_prints_every_row() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("date ") and "cores" in lines[0]
    rows = [line for line in lines if line.startswith("| (")]
    assert len(rows) == len(ROWS), done.stdout
    for pattern, row in zip(ROWS, rows, strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert re.fullmatch(pattern, cells[0]), f"expected {pattern!r}, got {row!r}"
        assert re.fullmatch(r"[\d,]+(\.\d+)?", cells[1]), f"not a figure: {row}"
    # The reconnect row shows how the fleet came back, second by second.
    assert re.search(r"back per second since the cp listened: (-?\d+s:\d+ ?)+", done.stdout)
    assert "Traceback" not in done.stderr
