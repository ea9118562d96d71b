"""The grammar of connector types: ``http``, ``service``, ``sql`` and plugins' types.

Grammar only: which keys a connector definition takes and which fields a
message element of that type may carry.  The connectors themselves live in
``agent.connectors`` (``http.py``, ``service.py``, ``sql.py``); docs/connectors.md
has the whole contract.  Plugins add their types through
``register_connector_type`` at start-up.

``service`` and ``sql`` name their action freely (a service action name;
``query SQL`` or ``execute SQL``) and return named outputs, so the parser
checks neither: the connector refuses a bad action with a fault naming it.
"""

from __future__ import annotations

import re
from typing import Final

_ACTION: Final = re.compile(r"([A-Z]+) (/.*)")
_HTTP_OUTPUT: Final = re.compile(
    r"status|headers\.[A-Za-z0-9_-]+|body((\.[A-Za-z0-9_-]+)|(\[\d+\]))*"
)


class ConnectorType:
    """What a connector type accepts: in its definition and on message elements."""

    def __init__(
        self,
        *,
        config: tuple[str, ...],
        required: tuple[str, ...],
        element_fields: tuple[str, ...],
        action: re.Pattern[str] | None = None,
        outputs: re.Pattern[str] | None = None,
    ) -> None:
        self.config = config
        self.required = required
        self.element_fields = element_fields
        self.action = action
        self.outputs = outputs


HTTP: Final = ConnectorType(
    config=("type", "base_url", "headers", "timeout"),
    required=("base_url",),
    element_fields=("body", "query", "headers"),
    action=_ACTION,
    outputs=_HTTP_OUTPUT,
)

SERVICE: Final = ConnectorType(
    config=("type", "url", "headers", "timeout"),
    required=("url",),
    element_fields=("inputs",),
)

SQL: Final = ConnectorType(
    # The password is a secret's name, never the password: flows are no place
    # for credentials, and the connector reads the agent's secret store.
    config=("type", "dsn", "password_secret", "timeout", "pool_size", "max_rows"),
    required=("dsn",),
    element_fields=("inputs",),
)

CONNECTOR_TYPES: dict[str, ConnectorType] = {"http": HTTP, "service": SERVICE, "sql": SQL}


def register_connector_type(name: str, kind: ConnectorType) -> None:
    """Later connector types (plugins) declare their grammar here."""
    CONNECTOR_TYPES[name] = kind
