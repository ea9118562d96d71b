"""Connector plugins from entry points: the example package, and broken plugins.

The example package (examples/plugin-example) is made visible the way pip
installs it: its module directory on the path and a ``dist-info`` with its
``entry_points.txt``, so ``importlib.metadata`` finds it like any installed
distribution, in this process and in a real ``flow-agent`` process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from agent.connectors.base import ConnectorRequest
from agent.connectors.guard import NetworkGuard
from agent.connectors.plugins import (
    PLUGIN_GROUP,
    GuardedConnector,
    discover_plugins,
    install_plugins,
)
from agent.connectors.registry import ConnectorRegistry, default_registry
from agent.flow.model import FlowInvalid, parse_flow
from agent.flow.parse import CONNECTOR_TYPES
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin-example"
FLOW = json.loads((EXAMPLE / "flow.json").read_text())


def _dist_info(site: Path, name: str, entry_points_txt: str) -> None:
    info = site / f"{name}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points_txt)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The example plugin, installed as pip would lay it out."""
    site = tmp_path / "site"
    _dist_info(
        site,
        "flow_agent_echo",
        f"[{PLUGIN_GROUP}]\necho = flow_agent_echo:EchoPlugin\n",
    )
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in ("echo", "broken-create", "ok2"):
        CONNECTOR_TYPES.pop(name, None)
    sys.modules.pop("flow_agent_echo", None)


def _installed() -> list[EntryPoint]:
    return [ep for ep in entry_points(group=PLUGIN_GROUP) if ep.name == "echo"]


async def test_the_example_plugin_is_found_and_runs_a_flow(site: Path, tmp_path: Path) -> None:
    eps = _installed()
    assert [ep.value for ep in eps] == ["flow_agent_echo:EchoPlugin"]
    store = SqliteStore.open(tmp_path / "state", synchronous="off")
    registry = default_registry(plugin_entry_points=eps)
    try:
        assert "echo" in registry.types()
        flow = parse_flow(FLOW)  # the grammar is registered: the flow validates
        runner = Runner(store=store, catalog=Catalog(store, local=[flow]), connectors=registry)
        result = await runner.start("echo-demo", {"name": "Ada"})
    finally:
        await registry.close_all()
        store.close()
    assert result["status"] == "completed", result
    assert result["outputs"] == {"greeting": ">> Hello, Ada", "shout": ">> HELLO, ADA"}


async def test_the_plugin_grammar_is_enforced(site: Path) -> None:
    discover_plugins(_installed())
    bad = json.loads(json.dumps(FLOW))
    bad["connectors"]["echo"]["colour"] = "red"
    bad["elements"]["greet"]["body"] = {"x": 1}
    with pytest.raises(FlowInvalid) as caught:
        parse_flow(bad)
    paths = {issue.path for issue in caught.value.issues}
    assert "connectors.echo.colour" in paths
    assert "elements.greet.body" in paths


def test_a_real_agent_process_validates_and_runs_through_the_plugin(
    site: Path, tmp_path: Path
) -> None:
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps(FLOW))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(EXAMPLE)])}
    cli = [sys.executable, "-m", "agent.cli"]
    checked = subprocess.run(
        [*cli, "validate", str(flow)], env=env, capture_output=True, text=True, timeout=60
    )
    assert checked.stdout.strip() == f"{flow}: ok", checked.stderr
    ran = subprocess.run(
        [*cli, "exec", str(flow), "--input", "name=Grace", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["outputs"]["shout"] == ">> HELLO, GRACE"


BROKEN = textwrap.dedent(
    """
    from agent.connectors.base import ConnectorResult
    from agent.connectors.plugins import ConnectorPlugin, ConnectorType

    GRAMMAR = ConnectorType(config=("type",), required=(), element_fields=("inputs",))

    class NotAPlugin:
        pass

    class NoTypeKey(ConnectorPlugin):
        def grammar(self):
            return ConnectorType(config=("url",), required=(), element_fields=())
        def create(self, context):
            raise AssertionError("never built")

    class CreateFails(ConnectorPlugin):
        def grammar(self):
            return GRAMMAR
        def create(self, context):
            raise RuntimeError("no licence")

    class Raises:
        async def call(self, request):
            raise RuntimeError("secret-in-exception")
        async def close(self):
            pass

    class Garbage:
        async def call(self, request):
            return {"ok": True}
        async def close(self):
            pass

    class Good(ConnectorPlugin):
        def __init__(self, connector=Raises):
            self.connector = connector
        def grammar(self):
            return GRAMMAR
        def create(self, context):
            return self.connector()

    def garbage():
        return Good(Garbage)

    def explodes():
        raise ImportError("a dependency is missing")
    """
)


def test_broken_plugins_are_logged_and_skipped(
    site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "broken_plugins.py").write_text(BROKEN)
    sys.path.insert(0, str(tmp_path))
    try:
        eps = [
            EntryPoint("missing", "no_such_module:Plugin", PLUGIN_GROUP),
            EntryPoint("not-a-plugin", "broken_plugins:NotAPlugin", PLUGIN_GROUP),
            EntryPoint("http", "broken_plugins:Good", PLUGIN_GROUP),
            EntryPoint("Bad Name", "broken_plugins:Good", PLUGIN_GROUP),
            EntryPoint("no-type", "broken_plugins:NoTypeKey", PLUGIN_GROUP),
            EntryPoint("explodes", "broken_plugins:explodes", PLUGIN_GROUP),
            EntryPoint("broken-create", "broken_plugins:CreateFails", PLUGIN_GROUP),
            *_installed(),
        ]
        with caplog.at_level(logging.ERROR, logger="flow_agent.connectors.plugins"):
            registry = ConnectorRegistry()
            added = install_plugins(registry, guard=NetworkGuard(), eps=eps)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_plugins", None)
    assert added == ["echo"]
    assert registry.types() == ["echo"]
    skipped = {r.getMessage().split("'")[1] for r in caplog.records if "skipped" in r.getMessage()}
    assert skipped == {
        "missing",
        "not-a-plugin",
        "http",
        "Bad Name",
        "no-type",
        "explodes",
        "broken-create",
    }
    assert "taken" in caplog.text and "no licence" in caplog.text
    # A type whose connector could not be built does not validate either.
    assert "broken-create" not in CONNECTOR_TYPES
    assert "http" in CONNECTOR_TYPES and "echo" in CONNECTOR_TYPES


async def test_a_plugin_that_raises_or_returns_garbage_faults_the_element(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "broken_plugins.py").write_text(BROKEN)
    sys.path.insert(0, str(tmp_path))
    try:
        eps = [
            EntryPoint("raises", "broken_plugins:Good", PLUGIN_GROUP),
            EntryPoint("garbage", "broken_plugins:garbage", PLUGIN_GROUP),
        ]
        registry = ConnectorRegistry()
        assert install_plugins(registry, guard=NetworkGuard(), eps=eps) == ["garbage", "raises"]
        request = ConnectorRequest(
            run_id="r",
            element="e",
            connector="c",
            connector_type="raises",
            config={},
            action="x",
        )
        raised = await registry.get("raises").call(request)
        garbage = await registry.get("garbage").call(request)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_plugins", None)
        CONNECTOR_TYPES.pop("raises", None)
        CONNECTOR_TYPES.pop("garbage", None)
    assert isinstance(registry.get("raises"), GuardedConnector)
    assert not raised.ok and raised.message == "the raises connector failed (RuntimeError)"
    assert not garbage.ok and "returned no ConnectorResult" in garbage.message
    # The exception's text may hold anything; it stays out of messages and logs.
    assert "secret-in-exception" not in caplog.text
