"""``flow-agent quickstart --once``: the whole demo, in this process, on loopback."""

from __future__ import annotations

import re

import pytest

from agent.cli import main


def test_quickstart_once_runs_the_examples_through_the_control_plane(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["quickstart", "--once"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(r"control plane\s+http://127\.0\.0\.1:\d+", out)
    assert re.search(r"agent\s+ag_\w+ paired with tenant demo", out)
    for flow in ("credit-check", "hello", "invoice-approval"):
        assert re.search(rf"published\s+{flow} v1", out), flow
    statuses = re.findall(r"status\s+(\w+)", out)
    assert statuses == ["completed", "completed", "waiting"]
    assert "path          credit -> route -> manager" in out
    assert "waiting at    manager (input)" in out
    assert re.search(r"open\s+http://127\.0\.0\.1:\d+/", out)
    assert "Traceback" not in err
