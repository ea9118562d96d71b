"""What a new admin's walk through the command line found: each finding, held by a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import EXIT_BROKEN_PIPE
from tests.e2e.helpers import clean_env
from tests.test_cli import EXAMPLES

# -- a reader that goes away -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", str(EXAMPLES / "hello.json")],
        ["validate", str(EXAMPLES / "hello.json")],
        ["config", "show"],
    ],
    ids=["exec", "validate", "config-show"],
)
def test_a_closed_pipe_exits_141_without_a_word(tmp_path: Path, argv: list[str]) -> None:
    # The reader closed its end before the command wrote: `flow-agent ... | true`, no race.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=clean_env(HOME=str(tmp_path)),
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == EXIT_BROKEN_PIPE == 141
    assert done.stderr == b""
