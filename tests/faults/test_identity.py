"""Identity: cases 25 (pairing tokens), 27 (file modes) and 28 (rotation under SIGKILL).

Real ``flow-agent pair`` and ``flow-agent run`` processes against the
reference control plane.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.identity import load_identity, load_private_key
from agent.protocol.signing import public_key_b64

from .conftest import LONG, Record
from .harness import ROOT, ControlPlaneThread, Daemon, agent_env, wait_for


def _pair(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "pair", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=agent_env(),
        preexec_fn=set_umask,
    )


def _everything_under(*dirs: Path) -> bytes:
    found = b""
    for top in dirs:
        for path in sorted(top.rglob("*")):
            if path.is_file():
                found += path.read_bytes()
    return found


def test_25_pairing_token_reused_or_expired(
    tmp_path: Path, cp: ControlPlaneThread, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 25. A token is used twice; another has expired.

    Pass: the second use and the expired token are refused with a clear
    error saying which (exit 1), the token file is wiped every time (used,
    refused or expired), and no token (nor its secret part) is in any log,
    in any file of the agents' state directories (database and WAL
    included) or of the control plane's data directory.
    """
    token, expired = cp.token(), cp.token(ttl=0.001)
    secret = token.rsplit(".", 1)[-1]
    outputs: list[str] = []
    codes: dict[str, int] = {}
    for name, text, state in (
        ("first", token, "a"),
        ("reused", token, "b"),
        ("expired", expired, "c"),
    ):
        file = tmp_path / f"{name}.token"
        file.write_text(text + "\n")
        done = _pair("--token-file", str(file), "--state-dir", str(tmp_path / state))
        codes[name] = done.returncode
        outputs += [done.stdout, done.stderr]
        assert not file.exists(), f"the {name} token file was left behind"
        if name != "first":
            assert done.returncode == 1
            assert ("already used" if name == "reused" else "expired") in done.stderr
            assert "Traceback" not in done.stderr
    assert codes["first"] == 0
    daemon = daemons("a")
    daemon.start()
    wait_for(daemon.connected, "the paired agent to connect", timeout=60)
    assert daemon.terminate() == 0
    outputs.append(daemon.log_text())
    haystack = "\n".join(outputs).encode() + _everything_under(
        tmp_path / "a", tmp_path / "b", tmp_path / "c", cp.settings.data_dir
    )
    for needle in (token, expired, secret, expired.rsplit(".", 1)[-1]):
        assert needle.encode() not in haystack
    record(25, refused=["reused", "expired"], token_files_wiped=3, token_in_logs_or_files=0)


def _as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="reading as another user needs root and setpriv",
)
def test_27_file_modes_after_pairing(
    open_base: Path, cp: ControlPlaneThread, record: Record
) -> None:
    """Case 27. Pair and run with umask 000, then look at every file as ``nobody``.

    Pass: the state directory is 0700 and every file in it 0600 (whatever
    the umask), and ``nobody`` can neither list the directory nor read any
    file, while a 0644 file beside it is readable (so the check has teeth).
    """
    state = open_base / "state"
    token = open_base / "token"
    token.write_text(cp.token())
    assert _pair("--token-file", str(token), "--state-dir", str(state), umask=0).returncode == 0
    secret = subprocess.run(
        [sys.executable, "-m", "agent.cli", "secret", "set", "k", "--state-dir", str(state)],
        input="v" * 20,
        text=True,
        capture_output=True,
        cwd=ROOT,
        env=agent_env(),
        timeout=60,
    )
    assert secret.returncode == 0, secret.stderr
    daemon = Daemon(state, log=open_base / "agent.log")
    daemon.start()
    try:
        wait_for(daemon.connected, "the agent to connect", timeout=60)
        files = sorted(p for p in state.rglob("*") if p.is_file())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert modes and all(m == 0o600 for m in modes.values()), modes
        assert _as_nobody("ls", str(state)).returncode != 0
        refused = [p.name for p in files if _as_nobody("cat", str(p)).returncode != 0]
        assert refused == [p.name for p in files]
        control = open_base / "control"
        control.write_text("x")
        control.chmod(0o644)
        assert _as_nobody("cat", str(control)).returncode == 0
    finally:
        daemon.stop()
    record(27, files=sorted(modes), dir_mode="0700", file_mode="0600", readable_by_nobody=0)


def _cp_key(cp: ControlPlaneThread, agent_id: str) -> str | None:
    rows = cp.read("SELECT public_key FROM agents WHERE id = ?", (agent_id,))
    return None if not rows else str(rows[0][0])


def _valid_credential(cp: ControlPlaneThread, state: Path) -> bool:
    """The identity on disk and the key on disk are a pair the control plane knows."""
    identity = load_identity(state)
    if identity is None:
        return False
    return _cp_key(cp, identity.agent_id) == public_key_b64(load_private_key(state))


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace injects the kill points")
def test_28_rotation_killed_at_every_step(
    tmp_path: Path, cp: ControlPlaneThread, daemons: Callable[..., Daemon], record: Record
) -> None:
    """Case 28. Re-pairing (the agent's credential rotation) killed at every rename and fsync.

    ``flow-agent pair --force`` replaces the key and the identity; strace
    kills it as it enters its K-th rename (with --long, then its K-th
    fsync too).  Pass:
    after every kill the state directory holds a valid credential (the old
    pair or the new pair, each known to the control plane, never a key of
    one with the identity of the other) and the agent connects with it;
    after a completed rotation the old identity is refused by the control
    plane without an admin's revoke (the re-pairing proved it held the old
    key, and the control plane revoked the old agent as it made the new one).
    """
    state = tmp_path / "agent"
    assert _pair(cp.token(), "--state-dir", str(state)).returncode == 0
    first = load_identity(state)
    assert first is not None
    shutil.copytree(state, tmp_path / "old")  # the old credential, as a thief would keep it
    kills = 0
    for syscall in ("rename", "fsync") if LONG else ("rename",):
        for k in range(1, 12):
            inject = f"inject={syscall}:signal=SIGKILL:when={k}"
            pair = ["agent.cli", "pair", cp.token(), "--force", "--state-dir", str(state)]
            command = [
                "strace",
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                f"trace={syscall}",
                "-e",
                inject,
                sys.executable,
                "-m",
                *pair,
            ]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=60, cwd=ROOT, env=agent_env()
            )
            if done.returncode == 0:
                break  # fewer than k such calls: the rotation completed
            kills += 1
            assert _valid_credential(cp, state), f"no valid credential after {syscall} #{k}"
    daemon = daemons("agent")
    daemon.start()
    wait_for(daemon.connected, "the agent to connect with what survived", timeout=60)
    assert daemon.terminate() == 0
    now = load_identity(state)
    assert now is not None and now.agent_id != first.agent_id
    thief = daemons("old")
    thief.start()
    assert thief.proc is not None
    assert thief.proc.wait(60) == 78  # refused (4403), it stops by itself: EX_CONFIG
    assert thief.status()["link"]["state"] == "revoked"
    record(28, kill_points=kills, valid_after_every_kill=kills, old_credential="refused (4403)")
