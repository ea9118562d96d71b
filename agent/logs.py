"""The daemon's logs: one JSON object per line on stdout, or readable text on a terminal.

Fields of a JSON line: ``ts`` (UTC, milliseconds), ``level``, ``logger``,
``message``; ``run_id``, ``flow`` and ``element`` when known, from
``extra=`` or from the context (``log_context``/``bind``, which follow an
asyncio task); any other ``extra=`` field; ``exc`` with the traceback of a
logged exception.

Secrets never reach a line: ``RedactFilter`` masks every value the
``Redactor`` knows (secret-store values as the runner reads them, the
pairing token, the API token) in the message, the traceback and every
field, before any formatter sees the record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Final
from urllib.parse import quote

from agent.errors import AgentError

FORMATS: Final = ("auto", "json", "text")
LEVELS: Final = ("debug", "info", "warning", "error")
CONTEXT_FIELDS: Final = ("run_id", "flow", "element")
MASK: Final = "[redacted]"
MIN_SECRET: Final = 4  # shorter values would mask half of every line and hide nothing

_CONTEXT: Final[dict[str, ContextVar[str | None]]] = {
    name: ContextVar(f"flow_agent_log_{name}", default=None) for name in CONTEXT_FIELDS
}
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}


# -- context --------------------------------------------------------------------


def bind(**fields: str | None) -> None:
    """Set context fields for the rest of the current task (or thread)."""
    for name, value in fields.items():
        _CONTEXT[name].set(value)


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Set context fields inside the block, as they were after it."""
    tokens = [(_CONTEXT[name], _CONTEXT[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_context() -> dict[str, str]:
    return {name: value for name, var in _CONTEXT.items() if (value := var.get()) is not None}


# -- redaction --------------------------------------------------------------------


class Redactor:
    """The secret values no log line may carry.  It only grows: a value
    removed from the secret store may still sit in a run's old error text."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def add(self, *values: str | None) -> None:
        fresh = set()
        for value in values:
            if not value or len(value) < MIN_SECRET:
                continue
            # As it may also appear: JSON-escaped, or percent-encoded in a URL.
            for form in (value, json.dumps(value)[1:-1], quote(value, safe="")):
                if form not in self._values:
                    fresh.add(form)
        if not fresh:
            return
        with self._lock:
            self._values |= fresh
            ordered = sorted(self._values, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def mask(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(MASK, text)


REDACTOR: Final = Redactor()


def add_secret(*values: str | None) -> None:
    """Mask these values in every log line from now on."""
    REDACTOR.add(*values)


class RedactingSecrets(Mapping[str, str]):
    """A secrets mapping that teaches the redactor every value it hands out.

    The runner and the connectors read secrets through it, so a value is
    masked in the logs before any code that uses it can log it.
    """

    def __init__(self, inner: Mapping[str, str], redactor: Redactor = REDACTOR) -> None:
        self._inner = inner
        self._redactor = redactor

    def __getitem__(self, name: str) -> str:
        value = self._inner[name]
        self._redactor.add(value)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)

    def __repr__(self) -> str:
        return f"RedactingSecrets({len(self._inner)} names)"  # never a value

    def refresh(self) -> int:
        """Learn every value now (at start and on reload); returns how many were read."""
        count = 0
        for name in list(self._inner):
            try:
                self[name]
            except (KeyError, AgentError):
                continue  # gone meanwhile, or unreadable: the run that needs it says so
            count += 1
        return count


class LogContextObserver:
    """A runner observer that puts the run's id, flow and element into the log context.

    It is told inside the task that drives the run, so every later line of
    that task carries them.
    """

    def committed(
        self,
        *,
        result: dict[str, Any],
        previous: str | None,
        visits: tuple[Any, ...],
        parent_id: str | None,
    ) -> None:
        path = result.get("path") or []
        waiting = result.get("waiting") or {}
        element = waiting.get("element") if isinstance(waiting, dict) else None
        bind(
            run_id=_text(result.get("run_id")),
            flow=_text(result.get("flow")),
            element=_text(element or (path[-1] if path else None)),
        )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class RedactFilter(logging.Filter):
    """Attaches the context fields and masks secrets in everything a record carries."""

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor
        self._exc = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_context().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        if not len(self.redactor):
            return True
        mask = self.redactor.mask
        record.msg = mask(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
            # The text is what formatters print; dropping the live exception
            # keeps a formatter from rendering it again, unmasked.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, mask(value))
        return True


# -- formats ----------------------------------------------------------------------


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_") and value is not None
    }


def _iso(created: float) -> str:
    return (
        datetime.fromtimestamp(created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL logger: message [run_id=... flow=...]`` for a person."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " [" + " ".join(f"{k}={v}" for k, v in extras.items()) + "]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def resolve_format(fmt: str, stream: IO[str]) -> str:
    """``auto`` is text on a terminal, JSON otherwise (journald, containers, files)."""
    if fmt != "auto":
        return fmt
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that a reconfiguration replaces it and nothing else."""


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (stdout) in ``fmt``, from ``level`` up.

    Replaces handlers installed before (by an earlier call or by the command
    line's defaults), so a reload can change level and format live.
    """
    stream = sys.stdout if stream is None else stream
    handler = _Handler(stream)
    handler.addFilter(RedactFilter())
    handler.setFormatter(
        JsonFormatter() if resolve_format(fmt, stream) == "json" else TextFormatter()
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Handler) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


__all__ = [
    "CONTEXT_FIELDS",
    "FORMATS",
    "LEVELS",
    "MASK",
    "REDACTOR",
    "JsonFormatter",
    "LogContextObserver",
    "RedactFilter",
    "RedactingSecrets",
    "Redactor",
    "TextFormatter",
    "add_secret",
    "bind",
    "configure_logging",
    "current_context",
    "log_context",
    "resolve_format",
]
