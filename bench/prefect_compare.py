"""Prefect 3 in a virtualenv of its own, and the timing of ``prefect_flow.py`` in it.

Prefect is not a dependency of flow-agent: the first comparison creates
``bench/.venv-prefect`` (git-ignored) with ``python -m venv`` and installs
Prefect 3 from the package index into it; later runs reuse it.  The flow
runs against Prefect's ephemeral API server (a subprocess Prefect starts
itself when ``PREFECT_API_URL`` is unset) with its SQLite database under a
temporary ``PREFECT_HOME``; no ``prefect server`` needs to be running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-prefect"
SCRIPT = HERE / "prefect_flow.py"
REQUIREMENT = "prefect>=3,<4"
INSTALL_TIMEOUT = 900.0
RUN_TIMEOUT = 900.0


@dataclass(frozen=True, slots=True)
class PrefectReport:
    """What the Prefect side measured, or why it could not (``runs_per_s`` None)."""

    runs_per_s: float | None = None
    runs_per_cpu_s: float | None = None  # CPU of the flow's process and its server
    default_runs_per_s: float | None = None
    first_run_s: float = 0.0
    version: str = ""
    why: str = ""


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_prefect(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import prefect"], capture_output=True, timeout=120, check=False
    )
    return probe.returncode == 0


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " / ".join(kept) or "no output"


def ensure_prefect() -> tuple[Path | None, str]:
    """The virtualenv's interpreter with Prefect importable, or None and why not."""
    python = _python()
    if _has_prefect(python):
        return python, ""
    print(f"bench: installing {REQUIREMENT} into {VENV.name} (once) ...", file=sys.stderr)
    steps = (
        [sys.executable, "-m", "venv", str(VENV)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            REQUIREMENT,
        ],
    )
    for step in steps:
        try:
            done = subprocess.run(
                step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"cannot run {Path(step[0]).name} {step[2]}: {exc}"
        if done.returncode != 0:
            return None, f"{Path(step[0]).name} {step[2]} failed: {_tail(done.stderr)}"
    if not _has_prefect(python):
        return None, "prefect was installed but does not import"
    return python, ""


def _environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
        # Two shared cores: the server's first start (migrations) can be slow.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def run_prefect(*, runs: int, default_runs: int) -> PrefectReport:
    python, why = ensure_prefect()
    if python is None:
        return PrefectReport(why=why)
    with tempfile.TemporaryDirectory(prefix="flow-agent-bench-prefect-") as tmp:
        try:
            done = subprocess.run(
                [str(python), str(SCRIPT), str(runs), str(default_runs)],
                cwd=tmp,
                env=_environment(Path(tmp) / "home"),
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return PrefectReport(why=f"the Prefect flow did not finish: {exc}")
    if done.returncode != 0:
        return PrefectReport(why=f"the Prefect flow failed: {_tail(done.stderr)}")
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
        return PrefectReport(
            runs_per_s=float(report["runs_per_s"]),
            runs_per_cpu_s=_number(report["runs_per_cpu_s"]),
            default_runs_per_s=_number(report["default_runs_per_s"]),
            first_run_s=float(report["first_run_s"]),
            version=str(report["prefect"]),
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return PrefectReport(why=f"unexpected output from the Prefect flow: {_tail(done.stdout)}")
