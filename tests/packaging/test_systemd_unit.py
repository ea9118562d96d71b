"""The systemd unit: the directives the agent's lifecycle relies on, and the
deployment gate (reliability case 34): ``systemd-analyze security`` must
score it 2.0 or lower.
"""

from __future__ import annotations

import json
import mmap
import re
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_helpers import (
    DEFAULT_CONFIG,
    ROOT,
    UNIT,
    agent_commands,
    clean_env,
    control_plane,
    free_port,
    parse_unit,
    tool,
)

from agent.cli import build_parser
from agent.settings import Settings

MAX_EXPOSURE = 2.0
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")

# Hardening that must stay: each line is a directive and the value it needs.
HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateUsers": "yes",
    "ProtectHostname": "yes",
    "ProtectClock": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values, f"{key}= is missing from the [Service] section"
    return values[-1]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, f"not a plain time span: {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def test_lifecycle_directives(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert seconds(one(service, "WatchdogSec")) > 0
    assert one(service, "Restart") == "on-failure"
    # 78: configuration or identity errors must not restart-loop.
    assert "78" in one(service, "RestartPreventExitStatus").split()
    assert one(service, "KillMode") == "mixed"


def test_stop_timeout_leaves_room_for_the_drain(service: dict[str, list[str]]) -> None:
    drain = Settings(state_dir=Path("/nonexistent")).drain_timeout
    assert seconds(one(service, "TimeoutStopSec")) >= drain + 5


def test_state_and_configuration_directories(service: dict[str, list[str]]) -> None:
    assert one(service, "User") == "flow-agent"
    assert "DynamicUser" not in service
    assert one(service, "StateDirectory") == "flow-agent"
    assert one(service, "StateDirectoryMode") == "0700"
    assert one(service, "ConfigurationDirectory") == "flow-agent"


def test_execstart_is_a_real_command_line(service: dict[str, list[str]]) -> None:
    argv = shlex.split(one(service, "ExecStart"))
    assert argv[:2] == ["/usr/bin/flow-agent", "run"]
    assert argv[2:] == ["--config", "/etc/flow-agent/agent.toml"]
    # The same words parse with the agent's own parser: a renamed flag or
    # command fails here, not at an admin's first start.
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.config == "/etc/flow-agent/agent.toml"


@pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
def test_hardening_directive(service: dict[str, list[str]], key: str, value: str) -> None:
    assert one(service, key) == value


def test_system_calls_are_filtered(service: dict[str, list[str]]) -> None:
    filters = service.get("SystemCallFilter", [])
    assert "@system-service" in filters
    assert any(f.startswith("~") and "@privileged" in f for f in filters)


def test_no_ip_allow_list(service: dict[str, list[str]]) -> None:
    # The control plane and connector targets are the admin's to name; an
    # IPAddressDeny= here would cut the agent off. A drop-in may add one.
    assert "IPAddressDeny" not in service


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = tool("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def _exposure(answer: subprocess.CompletedProcess[str]) -> float:
    match = EXPOSURE.search(answer.stdout + answer.stderr)
    assert match, f"no overall exposure in:\n{answer.stdout}\n{answer.stderr}"
    return float(match[1])


def test_security_exposure_is_at_most_2() -> None:
    # --threshold is on systemd's internal 0..100 scale: 20 is exposure 2.0.
    answer = _analyze("security", "--offline=yes", "--threshold=20", str(UNIT))
    exposure = _exposure(answer)
    assert exposure <= MAX_EXPOSURE, answer.stdout
    assert answer.returncode == 0, answer.stdout + answer.stderr


def test_the_gate_fails_a_bare_unit(tmp_path: Path) -> None:
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/usr/bin/flow-agent run\n")
    answer = _analyze("security", "--offline=yes", "--threshold=20", str(bare))
    assert _exposure(answer) > MAX_EXPOSURE
    assert answer.returncode != 0


def test_systemd_knows_every_directive() -> None:
    answer = _analyze("verify", "--man=no", str(UNIT))
    complaints = [
        line
        for line in answer.stderr.splitlines()
        # The binary is installed by the package, not on a test machine.
        if line.strip() and "/usr/bin/flow-agent is not executable" not in line
    ]
    assert complaints == []


# ---- MemoryDenyWriteExecute=yes: does the agent's Python stack cope?
#
# systemd enforces it with a seccomp filter; the kernel (6.3+) offers the same
# rule to any process as prctl(PR_SET_MDWE), inherited across exec. The agent
# runs under that rule here.

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

LAUNCHER = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(97)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _mdwe_supported() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "-c", "pass"], capture_output=True, timeout=60
    )
    return probe.returncode == 0


def _under_mdwe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not _mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_mdwe_really_refuses_writable_executable_memory(tmp_path: Path) -> None:
    probe = (
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    assert _under_mdwe("-c", probe, cwd=tmp_path).stdout.strip() == "refused"
    # Without the rule the same mapping is allowed: the refusal is the rule's.
    mapping = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    mapping.close()


IMPORT_ALL = """
import importlib, pkgutil, agent, controlplane
names = [m.name for pkg in (agent, controlplane)
         for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')]
for name in names:
    importlib.import_module(name)
from cryptography.hazmat.primitives.asymmetric import ed25519
key = ed25519.Ed25519PrivateKey.generate()
key.public_key().verify(key.sign(b'x'), b'x')
import ssl
ssl.create_default_context()
print(len(names))
"""


def test_every_agent_module_loads_under_mdwe(tmp_path: Path) -> None:
    answer = _under_mdwe("-c", IMPORT_ALL, cwd=ROOT)
    assert answer.returncode == 0, answer.stderr
    assert int(answer.stdout) > 20


def test_a_flow_runs_under_mdwe(tmp_path: Path) -> None:
    answer = _under_mdwe(
        "-m", "agent.cli", "exec", str(ROOT / "examples" / "hello.json"),
        "--state-dir", str(tmp_path / "state"), "--json",
        cwd=ROOT,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["status"] == "completed"


# ---- the daemon as systemd starts it
#
# No systemd runs here, so this plays its part: the unit's ExecStart=, the
# variables systemd sets (NOTIFY_SOCKET, WATCHDOG_USEC from WatchdogSec=,
# STATE_DIRECTORY from StateDirectory=, INVOCATION_ID), UMask=, a notify
# socket that checks each datagram's sender (NotifyAccess=main), SIGHUP for
# ExecReload= and SIGTERM for a stop within TimeoutStopSec=.


class NotifySocket:
    """systemd's end of the notify protocol, with each sender's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.seen: list[tuple[int, str]] = []

    def until(self, line: str, *, proc: subprocess.Popen[str], timeout: float) -> None:
        """Collect datagrams until one holds ``line``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None and not self._pending():
                pytest.fail(f"the daemon exited {proc.returncode} before {line}: {self.seen}")
            self.sock.settimeout(0.2)
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = -1
            for level, kind, payload in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    pid = struct.unpack("3i", payload[:12])[0]
            self.seen.append((pid, data.decode()))
            if line in data.decode().splitlines():
                return
        pytest.fail(f"no {line} within {timeout} s: {self.seen}")

    def _pending(self) -> bool:
        self.sock.settimeout(0)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, TimeoutError):
            return False
        return True

    def lines(self) -> list[str]:
        return [line for _, data in self.seen for line in data.splitlines()]

    def close(self) -> None:
        self.sock.close()


def _exec_start(service: dict[str, list[str]]) -> list[str]:
    argv = shlex.split(one(service, "ExecStart"))
    assert argv[0] == "/usr/bin/flow-agent" and argv[-2] == "--config"
    # The installed command and config file are this checkout's.
    return [sys.executable, "-m", "agent.cli", *argv[1:-1], str(DEFAULT_CONFIG)]


def test_the_daemon_keeps_the_units_contract(tmp_path: Path, service: dict[str, list[str]]) -> None:
    if "run" not in agent_commands():
        pytest.skip("`flow-agent run` is not in the CLI yet")
    state = tmp_path / "state"
    env = clean_env()
    with control_plane(tmp_path / "cp") as cp:
        # Paired first, as docs/deploy.md has the admin do.
        token = tmp_path / "pairing-token"
        token.write_text(cp.cli("token", "create", "--tenant", "acme") + "\n")
        paired = subprocess.run(
            [sys.executable, "-m", "agent.cli", "pair", "--token-file", str(token),
             "--state-dir", str(state)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert paired.returncode == 0, paired.stderr
        notify = NotifySocket(tmp_path / "notify")
        env.update(
            NOTIFY_SOCKET=str(notify.path),
            WATCHDOG_USEC=str(int(seconds(one(service, "WatchdogSec")) * 1_000_000)),
            STATE_DIRECTORY=str(state),
            INVOCATION_ID="0" * 32,
            # What a drop-in would do; the default port may be held by another test.
            FLOW_AGENT_API_LISTEN=f"127.0.0.1:{free_port()}",
        )
        log = tmp_path / "journal"
        with log.open("w") as journal:
            proc = subprocess.Popen(
                _exec_start(service), env=env, cwd=tmp_path, stdout=journal,
                stderr=subprocess.STDOUT, text=True, umask=int(one(service, "UMask"), 8),
            )  # fmt: skip
        try:
            notify.until("READY=1", proc=proc, timeout=seconds(one(service, "TimeoutStartSec")))
            assert any(line.startswith("STATUS=") for line in notify.lines())
            # ExecReload=: SIGHUP, answered with systemd's reload handshake.
            proc.send_signal(signal.SIGHUP)
            notify.until("RELOADING=1", proc=proc, timeout=30)
            notify.until("READY=1", proc=proc, timeout=30)
            proc.send_signal(signal.SIGTERM)
            notify.until("STOPPING=1", proc=proc, timeout=30)
            proc.wait(timeout=seconds(one(service, "TimeoutStopSec")))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            notify.close()
    assert proc.returncode == 0, log.read_text()
    # NotifyAccess=main: every datagram came from the main process.
    assert {pid for pid, _ in notify.seen} == {proc.pid}
    # StateDirectory= is where the daemon kept its state.
    assert (state / "state.db").exists()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
