"""The operations docs cannot fall behind: every setting, command and metric is in them.

Settings come from the settings table itself, commands from walking
``build_parser()``, metrics from scraping the registry the daemon serves
(the API's collectors and the daemon's together).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from agent.api.metrics import Metrics
from agent.cli import build_parser
from agent.metrics import AgentMetrics
from agent.settings import describe, names
from agent.supervisor import LIVE_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
ALL_DOCS = "\n".join((CONFIGURATION, OPERATIONS, README))


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every command path, ``secret set`` included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(" ".join((*prefix, name)))
                found += commands(sub, (*prefix, name))
    return found


def _settings_rows() -> dict[str, list[str]]:
    rows = {}
    for line in CONFIGURATION.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_setting_has_a_row_with_its_variable() -> None:
    rows = _settings_rows()
    described = describe()
    assert [r[0] for r in described] == names()
    for name, env, _default, _help in described:
        assert name in rows, f"{name} is missing from docs/configuration.md"
        assert rows[name][1] == f"`{env}`", name
    assert sorted(rows) == sorted(names())  # and nothing that no longer exists


def test_the_live_column_says_what_a_reload_changes() -> None:
    rows = _settings_rows()
    for name, cells in rows.items():
        live = cells[3] in ("live", "next session")
        assert live == (name in LIVE_SETTINGS), f"{name}: docs say {cells[3]!r}"


def test_every_command_is_documented() -> None:
    found = commands(build_parser())
    assert {"run", "status", "doctor", "health", "config show", "secret set"} <= set(found)
    missing = [c for c in found if f"`flow-agent {c}" not in ALL_DOCS]
    assert missing == []


def test_every_metric_is_in_the_operations_table() -> None:
    metrics = Metrics()
    AgentMetrics(registry=metrics.registry)
    exposed = []
    for family in metrics.registry.collect():
        exposed.append(f"{family.name}_total" if family.type == "counter" else family.name)
    assert len(exposed) >= 20
    table = set(re.findall(r"^\| `(flow_agent_[a-z_]+)` \|", OPERATIONS, re.MULTILINE))
    assert sorted(set(exposed) - table) == []
    assert sorted(table - set(exposed)) == []  # no row for a metric that is gone


def test_exit_codes_and_signals_are_documented() -> None:
    for word in (
        "| 78 |",
        "| 70 |",
        "| 0 |",
        "SIGHUP",
        "SIGTERM",
        "WATCHDOG=1",
        "READY=1",
        "STOPPING=1",
    ):
        assert word in OPERATIONS, word
