"""Which connector serves which connector type.

The runner looks a message element's connector type up here; each type has
one long-lived instance that serves every call and is closed at shutdown.

Built in: ``http``, ``service`` (remote connector services) and ``sql``.
Plugins: third-party connector types from the entry point group
``PLUGIN_GROUP`` (``agent.connectors.plugins``) are registered after the
built-in types, so that a plugin cannot silently replace a built-in
(``register`` refuses a type that is taken); a broken plugin is logged and
skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint
from pathlib import Path

from aiohttp.abc import AbstractResolver

from agent.connectors.base import Connector
from agent.connectors.guard import IPNetwork, guard_from_settings
from agent.connectors.http import DEFAULT_MAX_RESPONSE_BYTES, HttpConnector
from agent.connectors.plugins import PLUGIN_GROUP, install_plugins
from agent.connectors.service import Callbacks, ServiceConnector
from agent.connectors.sql import SqlConnector
from agent.errors import ConfigError

log = logging.getLogger("flow_agent.connectors")

__all__ = ["PLUGIN_GROUP", "ConnectorRegistry", "UnknownConnectorType", "default_registry"]


class UnknownConnectorType(ConfigError):
    """No connector is registered for a type a flow uses."""


class ConnectorRegistry:
    """Maps connector type names ("http", ...) to their connector instance."""

    def __init__(self) -> None:
        self._connectors: dict[str, Connector] = {}

    def register(self, connector_type: str, connector: Connector) -> None:
        if connector_type in self._connectors:
            raise ConfigError(f"connector type {connector_type!r} is registered twice")
        self._connectors[connector_type] = connector

    def get(self, connector_type: str) -> Connector:
        try:
            return self._connectors[connector_type]
        except KeyError:
            known = ", ".join(sorted(self._connectors)) or "none"
            raise UnknownConnectorType(
                f"no connector for type {connector_type!r} (known types: {known})"
            ) from None

    def types(self) -> list[str]:
        return sorted(self._connectors)

    def __contains__(self, connector_type: object) -> bool:
        return connector_type in self._connectors

    async def close_all(self) -> None:
        """Close every connector once; one that fails to close does not stop the rest."""
        seen: set[int] = set()
        for connector_type, connector in self._connectors.items():
            if id(connector) in seen:
                continue
            seen.add(id(connector))
            try:
                await connector.close()
            except Exception as exc:
                # Shutdown goes on; the type name is enough to find the culprit.
                log.warning(
                    "closing the %s connector failed: %s", connector_type, type(exc).__name__
                )


def default_registry(
    *,
    http_allow_networks: Iterable[str | IPNetwork] = (),
    http_deny_networks: Iterable[str | IPNetwork] = (),
    http_max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    resolver: AbstractResolver | None = None,
    secrets: Mapping[str, str] | None = None,
    state_dir: Path | None = None,
    callbacks: Callbacks | None = None,
    plugins: bool = True,
    plugin_entry_points: Iterable[EntryPoint] | None = None,
) -> ConnectorRegistry:
    """The built-in connector types and the plugins, configured from the agent's settings.

    Raises ConfigError for a network setting that does not parse.  ``resolver``
    replaces the system resolver (tests, or a custom DNS setup).  ``secrets``
    is the agent's secret store (the sql connector's passwords, plugins);
    ``state_dir`` is kept out of reach of sql files; ``callbacks`` (a
    ``CallbackIssuer``) lets services answer later, through the local API.
    ``plugin_entry_points`` replaces the installed entry points (tests).
    """
    guard = guard_from_settings(
        allow=http_allow_networks, deny=http_deny_networks, resolver=resolver
    )
    registry = ConnectorRegistry()
    registry.register(
        "http", HttpConnector(guard=guard, max_response_bytes=http_max_response_bytes)
    )
    registry.register(
        "service",
        ServiceConnector(
            guard=guard, callbacks=callbacks, max_response_bytes=http_max_response_bytes
        ),
    )
    registry.register("sql", SqlConnector(secrets=secrets, state_dir=state_dir))
    if plugins:
        install_plugins(
            registry, guard=guard, secrets=secrets, state_dir=state_dir, eps=plugin_entry_points
        )
    return registry
