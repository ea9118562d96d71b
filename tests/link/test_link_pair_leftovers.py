"""A pairing that fails leaves the state directory as it found it.

``flow-agent pair`` against the real control plane: a used token, a key
that does not match the token's fingerprint, a malformed token.  A directory
the attempt made is gone again; in one that was there, only what the attempt
made is removed.  ``flow-agent run`` with nothing to pair with makes nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agent.cli import main
from agent.identity import IDENTITY_FILE
from agent.protocol.signing import fingerprint, generate_private_key, parse_token
from agent.store.sqlite import SqliteStore
from tests.e2e.helpers import clean_env

from .linkhelpers import Cp


async def _pair(
    capsys: pytest.CaptureFixture[str], token: str, state_dir: Path
) -> tuple[int, str, str]:
    def call() -> tuple[int, str, str]:
        code = main(["pair", token, "--state-dir", str(state_dir)])
        out, err = capsys.readouterr()
        return code, out, err

    return await asyncio.to_thread(call)  # pair runs its own event loop


async def test_a_refused_pairing_takes_back_what_it_made(
    tmp_path: Path, cp: Cp, capsys: pytest.CaptureFixture[str]
) -> None:
    token = await cp.token()
    code, out, err = await _pair(capsys, token, tmp_path / "first")
    assert code == 0 and "agent id:" in out, err
    assert (tmp_path / "first" / IDENTITY_FILE).exists()

    # The token is used now: a new (nested) directory is not left behind.
    new = tmp_path / "new" / "state"
    code, _, err = await _pair(capsys, token, new)
    assert code == 1 and "already used" in err
    assert not (tmp_path / "new").exists()

    # A directory that was there keeps what it held, and only that.
    there = tmp_path / "there"
    there.mkdir()
    (there / "notes.txt").write_text("mine")
    code, _, err = await _pair(capsys, token, there)
    assert code == 1 and "already used" in err
    assert sorted(os.listdir(there)) == ["notes.txt"]


async def test_a_key_that_is_not_the_tokens_leaves_nothing(
    tmp_path: Path, cp: Cp, capsys: pytest.CaptureFixture[str]
) -> None:
    # The control plane answers, but with a key other than the one the token pins.
    token = parse_token(await cp.token())
    pinned_elsewhere = replace(token, fp=fingerprint(generate_private_key()))
    new = tmp_path / "state"
    code, _, err = await _pair(capsys, pinned_elsewhere.encode(), new)
    assert code == 1 and "does not match the fingerprint" in err
    assert not new.exists()


async def test_a_failure_in_a_store_that_was_there_keeps_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with SqliteStore.open(state) as store:
        store.set_meta("kept", "yes")
    before = sorted(os.listdir(state))
    # Nobody listens at the token's address: the attempt fails after opening the store.
    token = parse_token(await _a_token(tmp_path))
    code, _, err = await _pair(capsys, token.encode(), state)
    assert code == 1 and "cannot reach the control plane" in err
    assert sorted(os.listdir(state)) == before
    with SqliteStore.open(state) as store:
        assert store.get_meta("kept") == "yes"


async def _a_token(tmp_path: Path) -> str:
    """A well-formed token of a control plane that has stopped."""
    stopped = await Cp(tmp_path / "gone").start()
    try:
        await stopped.tenant("acme")
        return await stopped.token()
    finally:
        await stopped.stop()


async def test_a_malformed_token_makes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "state"
    code, _, err = await _pair(capsys, "fp1.not-a-token", new)
    assert code == 1 and "pairing token" in err
    assert not new.exists()


def test_run_without_identity_or_token_makes_nothing(tmp_path: Path) -> None:
    new = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(new)],
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(tmp_path)),
        timeout=60,
        check=False,
    )
    assert done.returncode == 78
    assert f"this agent is not paired ({new} holds no identity)" in done.stderr
    assert not new.exists()


async def test_pair_reads_the_token_file_named_in_the_environment(
    tmp_path: Path, cp: Cp, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "pairing-token"
    token_file.write_text(await cp.token() + "\n")
    monkeypatch.delenv("FLOW_AGENT_PAIRING_TOKEN", raising=False)
    monkeypatch.setenv("FLOW_AGENT_PAIRING_TOKEN_FILE", str(token_file))

    def call() -> tuple[int, str, str]:
        code = main(["pair", "--state-dir", str(tmp_path / "state")])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = await asyncio.to_thread(call)
    assert code == 0 and "agent id:" in out, err
    assert not token_file.exists()  # spent: wiped, as for --token-file
