"""Third-party connector types, from the entry-point group ``flow_agent.connectors``.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."flow_agent.connectors"]
    echo = "flow_agent_echo:EchoPlugin"

The entry point's name is the connector type flows use (``"type": "echo"``);
its object is a ``ConnectorPlugin`` subclass (or any callable returning a
``ConnectorPlugin``).  The agent loads every plugin at start-up, after the
built-in types:

1. ``discover_plugins()`` imports each entry point, calls it, and registers
   the plugin's grammar (``ConnectorPlugin.grammar()``) with the flow parser,
   so ``flow-agent validate`` knows the type;
2. ``install_plugins()`` asks each plugin for its connector
   (``ConnectorPlugin.create(context)``) and registers it with the runner's
   connector registry.

A plugin that fails at any step (does not import, raises, returns the wrong
thing, takes a name that is taken) is logged and skipped: the agent starts
without it, and flows using its type fail validation with "unknown connector
type".  A plugin connector that raises or returns something other than a
``ConnectorResult`` faults the element; it never takes the agent down.
docs/connectors.md documents the contract.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Final

from agent.connectors.base import Connector, ConnectorRequest, ConnectorResult
from agent.connectors.guard import NetworkGuard
from agent.flow.parse import CONNECTOR_TYPES, ConnectorType, register_connector_type

log = logging.getLogger("flow_agent.connectors.plugins")

PLUGIN_GROUP: Final = "flow_agent.connectors"
TYPE_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,39}")
BUILT_IN: Final = frozenset({"http", "service", "sql"})

__all__ = [
    "PLUGIN_GROUP",
    "ConnectorPlugin",
    "ConnectorType",
    "LoadedPlugin",
    "PluginContext",
    "discover_plugins",
    "install_plugins",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginContext:
    """What the agent hands a plugin when it builds the plugin's connector."""

    type_name: str  # the connector type this plugin serves
    guard: NetworkGuard  # use it for any outgoing connection (see guard.py)
    secrets: Mapping[str, str] = field(default_factory=dict)  # the agent's secret store
    state_dir: Path | None = None  # the agent's state directory: keep out of it
    logger: logging.Logger = field(default_factory=lambda: log)


class ConnectorPlugin(ABC):
    """The base class of a connector plugin.

    Subclass it, implement ``grammar`` and ``create``, and point an entry
    point of the group ``flow_agent.connectors`` at the subclass.  The class
    is instantiated with no arguments.

    ``grammar()`` says what a flow may write for the type: the connector
    definition's keys (``config``, which must include ``"type"``), the
    required ones, and which of ``body``, ``query``, ``headers`` and ``inputs``
    a message element may carry (``element_fields``).  The connector gets the
    definition's keys in ``request.config`` (except ``headers``, rendered into
    ``request.headers``, where secrets may appear) and the rendered element
    fields in ``request.body`` / ``.query`` / ``.headers`` / ``.inputs``.

    ``create(context)`` returns the connector: an object with ``async
    call(request) -> ConnectorResult`` and ``async close()``.  One instance
    serves every call of the type, concurrently; ``close`` is called once at
    shutdown.  Return named outputs in ``ConnectorResult.outputs`` (a flow's
    ``outputs`` map value names to these names), ``ok=False`` with a
    ``message`` for a fault, ``wait=True`` to answer later through a
    callback.  Never put a value of ``request.redact`` into a message or log.
    """

    @abstractmethod
    def grammar(self) -> ConnectorType:
        """The flow grammar of this connector type."""

    @abstractmethod
    def create(self, context: PluginContext) -> Connector:
        """Build the connector instance that serves every call of the type."""


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    name: str  # the connector type
    plugin: ConnectorPlugin
    source: str  # "module:attr (distribution version)", for logs


_discovered: list[LoadedPlugin] | None = None


def _source(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" ({dist.name} {dist.version})" if dist is not None else ""
    return f"{ep.value}{where}"


def discover_plugins(eps: Iterable[EntryPoint] | None = None) -> list[LoadedPlugin]:
    """Load the plugins and register their grammar; skip (and log) broken ones.

    Without ``eps`` the installed entry points are read, once per process.
    """
    global _discovered
    if eps is None:
        if _discovered is not None:
            return list(_discovered)
        eps = entry_points(group=PLUGIN_GROUP)
        _discovered = _load(eps)
        return list(_discovered)
    return _load(eps)


def _load(eps: Iterable[EntryPoint]) -> list[LoadedPlugin]:
    loaded: list[LoadedPlugin] = []
    taken = set(BUILT_IN)
    for ep in sorted(eps, key=lambda e: e.name):
        source = _source(ep)
        try:
            plugin = _load_one(ep, taken)
        except Exception as exc:
            # A broken plugin must not keep the agent from starting.
            log.error(
                "connector plugin %r from %s is skipped: %s: %s",
                ep.name,
                source,
                type(exc).__name__,
                exc,
            )
            continue
        taken.add(ep.name)
        loaded.append(LoadedPlugin(ep.name, plugin, source))
        log.info("connector plugin %r loaded from %s", ep.name, source)
    return loaded


def _load_one(ep: EntryPoint, taken: set[str]) -> ConnectorPlugin:
    name = ep.name
    if not TYPE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a connector type name ({TYPE_NAME.pattern})")
    if name in taken:
        raise ValueError(f"connector type {name!r} is taken (built in or another plugin)")
    factory = ep.load()
    plugin = factory()
    if not isinstance(plugin, ConnectorPlugin):
        raise TypeError(f"{ep.value} gave {type(plugin).__name__}, not a ConnectorPlugin")
    grammar = plugin.grammar()
    if not isinstance(grammar, ConnectorType):
        raise TypeError(f"grammar() gave {type(grammar).__name__}, not a ConnectorType")
    if "type" not in grammar.config:
        raise ValueError("grammar().config must include 'type'")
    unknown = set(grammar.element_fields) - {"body", "query", "headers", "inputs"}
    if unknown:
        raise ValueError(f"grammar().element_fields has unknown fields {sorted(unknown)}")
    register_connector_type(name, grammar)
    return plugin


def install_plugins(
    registry: Any,
    *,
    guard: NetworkGuard,
    secrets: Mapping[str, str] | None = None,
    state_dir: Path | None = None,
    eps: Iterable[EntryPoint] | None = None,
) -> list[str]:
    """Register each discovered plugin's connector in ``registry``; the types added."""
    added: list[str] = []
    for loaded in discover_plugins(eps):
        context = PluginContext(
            type_name=loaded.name,
            guard=guard,
            secrets=secrets if secrets is not None else {},
            state_dir=state_dir,
            logger=logging.getLogger(f"flow_agent.plugins.{loaded.name}"),
        )
        try:
            connector = loaded.plugin.create(context)
            if not callable(getattr(connector, "call", None)) or not callable(
                getattr(connector, "close", None)
            ):
                raise TypeError("create() must return an object with call() and close()")
            registry.register(loaded.name, GuardedConnector(loaded.name, connector))
        except Exception as exc:
            log.error(
                "connector plugin %r from %s is skipped: create() failed: %s: %s",
                loaded.name,
                loaded.source,
                type(exc).__name__,
                exc,
            )
            # Flows must not validate against a type nothing can run.
            CONNECTOR_TYPES.pop(loaded.name, None)
            continue
        added.append(loaded.name)
    return added


class GuardedConnector:
    """A plugin's connector, held to the contract: faults, never exceptions."""

    def __init__(self, name: str, inner: Connector) -> None:
        self.name = name
        self.inner = inner

    async def call(self, request: ConnectorRequest) -> ConnectorResult:
        try:
            result = await self.inner.call(request)
        except Exception as exc:
            log.error("connector plugin %r raised %s", self.name, type(exc).__name__)
            return ConnectorResult(
                ok=False, message=f"the {self.name} connector failed ({type(exc).__name__})"
            )
        if not isinstance(result, ConnectorResult):
            log.error("connector plugin %r returned %s", self.name, type(result).__name__)
            return ConnectorResult(
                ok=False, message=f"the {self.name} connector returned no ConnectorResult"
            )
        return result

    async def close(self) -> None:
        await self.inner.close()
