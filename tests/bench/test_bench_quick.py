"""``bench/engine.py --quick --no-prefect`` runs and prints its table.

No figure is asserted: timings on a shared machine mean nothing in a test.
The bench checks the results of the runs it times and exits 1 when one is
wrong, so a zero exit also says that every timed run did what it should.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine.py"
ROWS = (
    "(a) runs, one at a time",
    "(a) runs, 100 concurrent",
    "(b) one looping run",
    "(c) waiting runs, RSS growth",
)


def test_quick_bench_prints_every_row() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--no-prefect"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("date ") and "cores" in lines[0]
    for name in ROWS:
        row = next((line for line in lines if line.startswith(f"| {name}")), None)
        assert row is not None, f"no row {name!r} in:\n{done.stdout}"
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert re.fullmatch(r"-?[\d,]+(\.\d+)?", cells[1]), f"not a figure: {row}"
    assert "prefect" not in done.stdout.lower()
