"""The ``sql`` connector: parameterised statements on SQLite and PostgreSQL.

A connector definition names the database; the statement is fixed in the
flow, in the element's ``action``::

    "db":   {"type": "sql", "dsn": "postgresql://app@db.internal/erp",
             "password_secret": "erp-db", "timeout": 5}
    "load": {"type": "message", "connector": "db",
             "action": "query SELECT id, name FROM customers WHERE id = :id",
             "inputs": {"id": {"ref": "customer_id"}},
             "outputs": {"customers": "rows", "customer": "first"}, ...}

* ``query SQL`` returns ``rows`` (a list of objects, column name to value),
  ``first`` (the first row or null) and ``row_count``; ``execute SQL``
  returns ``row_count`` (rows inserted, updated or deleted).
* The SQL text is never templated.  ``:name`` parameters are bound from the
  element's ``inputs`` by the driver; every parameter must be given and every
  input used (a typo must not silently bind null).  ``?``, ``$1`` and the like
  are refused, so there is one way to write a parameter on both databases.
* Each call runs in its own transaction, within the element's ``timeout``
  (the query is cancelled when it runs over); retries (``retry``) apply only
  to failures to connect, never to a statement that may have run.
* One connection pool per DSN (and password), ``pool_size`` connections at
  most (default 5); closed by ``close()``.
* Results: numbers stay exact (``Decimal``; SQLite reals through their
  shortest repr), datetimes and dates become ISO 8601 text, bytes base64,
  JSON columns objects.  A query returning more than ``max_rows`` (default
  10,000) faults instead of filling memory.
* The password is never in the flow: ``password_secret`` names an entry of
  the agent's secret store.  A DSN that carries a password is refused.
  SQLite files must exist, and may not lie inside the agent's state directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from agent.connectors.base import ConnectorRequest, ConnectorResult
from agent.connectors.http import Sleep
from agent.connectors.http_wire import Redactor
from agent.connectors.sql_backends import (
    Backend,
    ConnectFailed,
    Outcome,
    PostgresBackend,
    SqliteBackend,
    StatementFailed,
)
from agent.connectors.sql_text import Statement, StatementError, compile_statement

log = logging.getLogger("flow_agent.connectors.sql")

DEFAULT_POOL_SIZE: Final = 5
MAX_POOL_SIZE: Final = 50
DEFAULT_MAX_ROWS: Final = 10_000
MAX_MAX_ROWS: Final = 1_000_000
_ACTION: Final = re.compile(r"\s*(query|execute)\s+(.+)", re.DOTALL | re.IGNORECASE)


class _Fault(Exception):
    """Ends a call as a fault; the message is for a person."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a DSN points: a SQLite file or a PostgreSQL server."""

    kind: str  # "sqlite" or "postgresql"
    dsn: str  # for PostgreSQL: the DSN as given
    path: Path | None = None  # for SQLite
    readonly: bool = False
    shown: str = ""  # the DSN for messages and logs


def parse_action(action: str) -> tuple[str, str]:
    """``query SQL`` / ``execute SQL`` into (kind, SQL)."""
    match = _ACTION.fullmatch(action)
    if match is None:
        raise _Fault(
            f"the action of a sql connector is 'query SQL' or 'execute SQL', not {action[:40]!r}"
        )
    return match.group(1).lower(), match.group(2).strip()


def parse_dsn(dsn: Any, *, state_dir: Path | None = None) -> Target:
    if not isinstance(dsn, str) or not dsn:
        raise _Fault("dsn must be text like sqlite:///path/to/file.db or postgresql://user@host/db")
    try:
        parts = urlsplit(dsn)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise _Fault(f"dsn does not parse: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc:
            raise _Fault("a sqlite dsn names a file: sqlite:///absolute/path.db (no host)")
        path = Path("/" + parts.path.lstrip("/"))
        if path == Path("/"):
            raise _Fault("a sqlite dsn needs a file path: sqlite:///absolute/path.db")
        options = parse_qs(parts.query)
        unknown = set(options) - {"mode"}
        mode = options.get("mode", ["rw"])[-1]
        if unknown or mode not in ("ro", "rw"):
            raise _Fault("a sqlite dsn takes only ?mode=ro or ?mode=rw")
        if state_dir is not None and _inside(path, state_dir):
            raise _Fault(
                "a sqlite dsn may not point into the agent's state directory "
                "(the agent's own database and keys live there)"
            )
        return Target("sqlite", dsn, path=path, readonly=mode == "ro", shown=f"sqlite://{path}")
    if scheme in ("postgresql", "postgres"):
        if parts.password is not None:
            raise _Fault(
                "the dsn carries a password; put it in the agent's secret store "
                "(flow-agent secret set NAME) and name it in password_secret"
            )
        if not parts.hostname:
            raise _Fault("a postgresql dsn needs a host: postgresql://user@host/db")
        user = f"{parts.username}@" if parts.username else ""
        where = f"{parts.hostname}:{port}" if port else parts.hostname
        return Target("postgresql", dsn, shown=f"{scheme}://{user}{where}{parts.path}")
    raise _Fault(f"dsn scheme {parts.scheme!r} is not supported (use sqlite or postgresql)")


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(Path(directory).resolve())
    except ValueError:
        return False
    return True


def _bounded_int(config: Mapping[str, Any], key: str, default: int, top: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise _Fault(f"{key} must be a whole number from 1 to {top}")
    return value


class SqlConnector:
    """Executes ``sql`` connector requests.  One instance serves every call."""

    def __init__(
        self,
        *,
        secrets: Mapping[str, str] | None = None,
        state_dir: Path | None = None,
        connect_timeout: float = 10.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._secrets = secrets if secrets is not None else {}
        self._state_dir = state_dir
        self._connect_timeout = connect_timeout
        self._sleep = sleep
        self._backends: dict[str, Backend] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            try:
                await backend.close()
            except Exception as exc:  # one bad pool must not keep the others open
                log.warning("closing a sql pool failed: %s", type(exc).__name__)

    async def call(self, request: ConnectorRequest) -> ConnectorResult:
        password = None
        try:
            password = self._password(request)
            redact = Redactor((*request.redact, *([password] if password else [])))
        except _Fault as fault:
            return ConnectorResult(ok=False, message=Redactor(request.redact)(str(fault)))
        try:
            outputs, attempts = await self._call(request, password)
        except _Fault as fault:
            return ConnectorResult(ok=False, message=redact(str(fault)))
        except Exception as exc:
            # A bug of ours (or a driver surprise) must still end as a fault.
            log.error("sql connector failed unexpectedly: %s", redact(repr(exc)))
            message = f"the sql connector failed unexpectedly ({type(exc).__name__})"
            return ConnectorResult(ok=False, message=message)
        return ConnectorResult(ok=True, outputs=outputs, attempts=attempts)

    def _password(self, request: ConnectorRequest) -> str | None:
        name = request.config.get("password_secret")
        if name is None:
            return None
        if not isinstance(name, str):
            raise _Fault("password_secret must be the name of a secret")
        try:
            value = self._secrets.get(name)
        except Exception as exc:  # an undecryptable secret says why, without its value
            raise _Fault(f"secret {name!r} cannot be read: {exc}") from None
        if value is None:
            raise _Fault(
                f"secret {name!r} (password_secret of connector {request.connector}) "
                "is not in the agent's secret store"
            )
        return value

    async def _call(
        self, request: ConnectorRequest, password: str | None
    ) -> tuple[dict[str, Any], int]:
        if self._closed:
            raise _Fault("the sql connector is closed")
        target = parse_dsn(request.config.get("dsn"), state_dir=self._state_dir)
        kind, sql = parse_action(request.action)
        try:
            statement = compile_statement(sql)
        except StatementError as exc:
            raise _Fault(f"the statement of {request.element!r}: {exc}") from None
        params = _params(statement, request.inputs)
        max_rows = _bounded_int(request.config, "max_rows", DEFAULT_MAX_ROWS, MAX_MAX_ROWS)
        backend = await self._backend(target, password, request.config)
        attempts = max(1, request.retry.attempts)
        tried = 0
        for tried in range(1, attempts + 1):
            if tried > 1:
                await self._sleep(request.retry.backoff * 2 ** (tried - 2))
            try:
                outcome = await backend.run(
                    kind, statement, params, timeout=request.timeout, max_rows=max_rows
                )
            except ConnectFailed as exc:
                log.warning("sql %s: %s (try %d of %d)", target.shown, exc, tried, attempts)
                if exc.retryable and tried < attempts:
                    continue
                raise _Fault(
                    f"cannot connect to {target.shown} after {tried} "
                    f"{'try' if tried == 1 else 'tries'}: {exc}"
                ) from None
            except StatementFailed as exc:
                raise _Fault(f"{kind} on {target.shown} failed: {exc}") from None
            log.info("sql %s on %s -> %d row(s)", kind, target.shown, outcome.row_count)
            return _outputs(kind, outcome), tried
        raise AssertionError("unreachable: the loop returns or raises")

    async def _backend(
        self, target: Target, password: str | None, config: Mapping[str, Any]
    ) -> Backend:
        size = _bounded_int(config, "pool_size", DEFAULT_POOL_SIZE, MAX_POOL_SIZE)
        digest = hashlib.sha256((password or "").encode("utf-8")).hexdigest()
        # A rotated password gets a pool of its own; the old one closes at shutdown.
        key = f"{target.dsn}\x00{digest}"
        async with self._lock:
            backend = self._backends.get(key)
            if backend is None:
                if target.kind == "sqlite":
                    assert target.path is not None
                    backend = SqliteBackend(target.path, readonly=target.readonly, size=size)
                else:
                    backend = PostgresBackend(
                        target.dsn,
                        password=password,
                        size=size,
                        connect_timeout=self._connect_timeout,
                    )
                self._backends[key] = backend
        return backend


def _params(statement: Statement, inputs: Any) -> dict[str, Any]:
    given = inputs if inputs is not None else {}
    if not isinstance(given, Mapping):
        raise _Fault("the inputs of a sql statement must be an object of parameter values")
    missing = [n for n in statement.names if n not in given]
    if missing:
        raise _Fault(
            "the statement's parameter(s) "
            + ", ".join(f":{n}" for n in missing)
            + " have no value in inputs"
        )
    unused = sorted(set(given) - set(statement.names))
    if unused:
        raise _Fault(f"input(s) {', '.join(unused)} are no parameter of the statement")
    return dict(given)


def _outputs(kind: str, outcome: Outcome) -> dict[str, Any]:
    if kind == "execute":
        return {"row_count": outcome.row_count}
    rows = outcome.rows
    return {"rows": rows, "first": rows[0] if rows else None, "row_count": len(rows)}
