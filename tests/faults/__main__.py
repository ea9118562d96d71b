"""``python -m tests.faults [--long] [--figures FILE] [PYTEST ARGS...]``

Runs the fault suite (tests/faults) and the existing tests the catalogue
counts as evidence (``EVIDENCE`` in evidence.py), then prints the figures
each case recorded.  ``--long`` selects the large counts: 200 SIGKILLs, a
five-minute partition, a five-minute reset storm, the default 20 s
heartbeat for the half-open link.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from .evidence import EVIDENCE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--long", action="store_true", help="the large counts")
    parser.add_argument("--figures", type=Path, help="append the figures (JSON lines) here")
    parser.add_argument(
        "--no-evidence", action="store_true", help="skip the existing tests counted as evidence"
    )
    args, rest = parser.parse_known_args(argv)
    here = Path(__file__).resolve().parent
    figures = args.figures or Path(tempfile.mkstemp(prefix="faults-", suffix=".jsonl")[1])
    os.environ["FAULTS_FIGURES"] = str(figures)
    if args.long:
        os.environ["FAULTS_LONG"] = "1"
    targets = [str(here)]
    if not args.no_evidence:
        root = here.parents[1]
        targets += sorted({str(root / node) for nodes in EVIDENCE.values() for node in nodes})
    # The long cases run for minutes: lift the suite-wide per-test timeout.
    extra = ["-o", "timeout=3600"] if args.long else []
    code = int(pytest.main(["-p", "no:cacheprovider", "-q", *extra, *targets, *rest]))
    print(f"\nfigures ({figures}):")
    for line in figures.read_text().splitlines() if figures.exists() else []:
        doc = json.loads(line)
        case, test = doc.pop("case"), doc.pop("test")
        doc.pop("long", None)
        print(f"  case {case:>2} {test}: " + ", ".join(f"{k}={v}" for k, v in doc.items()))
    return code


if __name__ == "__main__":
    sys.exit(main())
