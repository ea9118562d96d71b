"""``flow-agent quickstart`` from a wheel, away from the source checkout.

The wheel is built from a copy of the sources (as the container build does),
unpacked into a directory of its own, and run with a working directory that
has no ``examples/``: the example flows must come from inside the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("hello.json", "invoice-approval.json", "flows/credit-check.json")


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's contents in a directory of their own (what pip would install)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("agent", "controlplane"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = base / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
        cwd=source, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = out.glob("flow_agent-*.whl")
    site = base / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for example in EXAMPLES:
            assert f"agent/examples/{example}" in names, sorted(n for n in names if "json" in n)
        archive.extractall(site)
    return site


def _python(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The unpacked wheel first on the path: it wins over the checkout's editable install.
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_the_wheel_ships_the_examples_the_checkout_links_to(unpacked: Path) -> None:
    for example in EXAMPLES:
        shipped = json.loads((unpacked / "agent" / "examples" / example).read_text())
        linked = ROOT / "examples" / example  # the docs' and tests' path to the same file
        assert json.loads(linked.read_text()) == shipped


def test_the_loader_finds_the_examples_from_another_directory(
    unpacked: Path, tmp_path: Path
) -> None:
    script = (
        "import json, agent\n"
        "from agent.link.quickstart import example_flows\n"
        "print(json.dumps([agent.__file__, [d['id'] for d in example_flows()]]))\n"
    )
    done = _python(unpacked, tmp_path, "-c", script)
    assert done.returncode == 0, done.stderr
    where, ids = json.loads(done.stdout)
    assert Path(where).is_relative_to(unpacked)  # not the checkout
    assert ids == ["credit-check", "hello", "invoice-approval"]  # subflows first
    assert not (tmp_path / "examples").exists()


def test_quickstart_once_runs_from_the_wheel(unpacked: Path, tmp_path: Path) -> None:
    done = _python(unpacked, tmp_path, "-m", "agent.cli", "quickstart", "--once")
    assert done.returncode == 0, done.stderr[-2000:]
    for flow in ("credit-check", "hello", "invoice-approval"):
        assert f"published       {flow} v1" in done.stdout, done.stdout
    assert done.stdout.count("status        completed") == 2
    assert "Traceback" not in done.stderr
