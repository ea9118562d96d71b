"""The grammar of the built-in connector types beyond ``http``: ``service`` and ``sql``.

Grammar only: which keys a connector definition takes and which fields a
message element of that type may carry.  The connectors themselves live in
``agent.connectors`` (``service.py``, ``sql.py``); docs/connectors.md has the
whole contract.  ``parse`` imports this module, so every parse knows these
types; plugins add theirs through ``register_connector_type`` at start-up.

Both types name their action freely (a service action name; ``query SQL`` or
``execute SQL``) and return named outputs, so the parser checks neither: the
connector refuses a bad action with a fault naming it.
"""

from __future__ import annotations

from typing import Final

from .parse import ConnectorType, register_connector_type

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

register_connector_type("service", SERVICE)
register_connector_type("sql", SQL)
