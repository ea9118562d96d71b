"""What the deployment tests share: the files under test, small parsers for
them, and the external tools that check them (found, or installed on demand).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "flow-agent.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KUSTOMIZE_DIR = ROOT / "packaging" / "kubernetes"
DEB_DIR = ROOT / "packaging" / "deb"
DEFAULT_CONFIG = ROOT / "packaging" / "agent.toml"

# checkov pins most of what it imports, so it lives in a venv of its own,
# made on first use in the user's cache directory (outside the work tree,
# so that later runs and fresh clones on the same machine reuse it).
CHECKOV_VERSION = "3.3.30"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- systemd unit files


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file: each key with all its values, in order.

    Keys may repeat (``SystemCallFilter=`` twice adds to the list), so every
    value is kept; continuation lines (trailing backslash) are joined.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# ---- Dockerfiles


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV ...
    args: str


def dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments dropped, continuation lines joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages: each starts with its FROM."""
    found: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(ins)
    return found


def env_of(stage: list[Instruction], *, base: dict[str, str]) -> dict[str, str]:
    """The environment a stage's ENV lines set, ``$VAR`` expanded against ``base``."""
    env = dict(base)
    for ins in stage:
        if ins.keyword != "ENV":
            continue
        for word in shlex.split(ins.args):
            name, sep, value = word.partition("=")
            if not sep:
                raise ValueError(f"use ENV NAME=VALUE: {ins.args!r}")
            for known, current in sorted(env.items(), key=lambda kv: -len(kv[0])):
                value = value.replace(f"${{{known}}}", current).replace(f"${known}", current)
            env[name] = value
    return env


def exec_form(stage: list[Instruction], keyword: str) -> list[str]:
    """The last ENTRYPOINT/CMD/... of a stage in exec (JSON) form."""
    matches = [ins for ins in stage if ins.keyword == keyword]
    if not matches:
        return []
    value = json.loads(matches[-1].args)
    assert isinstance(value, list), f"{keyword} must use the exec (JSON) form"
    return [str(v) for v in value]


def copies(stage: list[Instruction]) -> dict[str, str]:
    """COPY lines from the build context: destination -> source."""
    out: dict[str, str] = {}
    for ins in stage:
        if ins.keyword != "COPY" or ins.args.startswith("--from"):
            continue
        words = shlex.split(ins.args)
        *sources, dest = [w for w in words if not w.startswith("--")]
        for src in sources:
            out[dest.rstrip("/") if len(sources) == 1 else f"{dest}/{src}"] = src
    return out


# ---- the agent itself


def agent_commands() -> set[str]:
    """The subcommands ``flow-agent`` has in this checkout."""
    # argparse keeps its subcommand table on a private action class.
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def setting_names() -> set[str]:
    from agent import settings

    return set(settings.names())


def commented_settings(text: str) -> dict[str, str]:
    """``# name = value`` lines of a sample config: name -> the TOML line."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("#"):
            continue
        body = line.lstrip("#").strip()
        name, sep, value = body.partition(" = ")
        if sep and name.isidentifier() and value:
            try:
                tomllib.loads(body)
            except tomllib.TOMLDecodeError:
                continue  # prose that happens to contain " = "
            found[name] = body
    return found


# ---- external tools


def tool(name: str) -> str | None:
    """A command from PATH or from this interpreter's bin directory (pip tools)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def checkov() -> list[str] | None:
    """The checkov command, installing it into its own venv on first use.

    None when it cannot be installed here (no registry reachable).
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "flow-agent-tests" / f"checkov-{CHECKOV_VERSION}"
    python = venv / "bin" / "python"
    done = venv / ".installed"
    if not done.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        answer = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             f"checkov=={CHECKOV_VERSION}"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if answer.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            return None
        done.write_text(CHECKOV_VERSION + "\n")
    return [str(python), "-c", "import sys; from checkov.main import Checkov; "
            "sys.exit(Checkov().run())"]  # fmt: skip


def offline_env() -> dict[str, str]:
    """checkov's environment: no update check, no download of guidelines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "CKV_", "PRISMA_"))}
    env.update(
        {
            "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
            "BC_SKIP_MAPPING": "TRUE",
            "LOG_LEVEL": "ERROR",
        }
    )
    return env


# ---- a real control plane


class ControlPlane:
    """``flow-controlplane serve`` on loopback, driven through its CLI."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[str] | None = None

    def cli(self, *args: str) -> str:
        answer = subprocess.run(
            [sys.executable, "-m", "controlplane.cli", *args, "--url", self.url,
             "--data", str(self.data)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean_env(),
        )  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        return answer.stdout.strip()

    def start(self) -> ControlPlane:
        port = self.url.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "serve", "--data", str(self.data),
             "--port", port],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            env=clean_env(),
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, line
        self.proc.stdout.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW_AGENT_", "FLOW_CP_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


@contextmanager
def control_plane(data: Path) -> Iterator[ControlPlane]:
    """A running control plane with the tenant ``acme``."""
    plane = ControlPlane(data).start()
    try:
        plane.cli("tenant", "create", "acme")
        yield plane
    finally:
        plane.stop()
