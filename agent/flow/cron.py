"""5-field cron expressions: validation only (schedules run in agent.runtime)."""

from __future__ import annotations

import re
from typing import Final

_MONTHS: Final = (
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "oct",
    "nov",
    "dec",
)
_DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS: Final = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ITEM: Final = re.compile(r"(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(\d+))?")


class CronError(ValueError):
    pass


def _number(text: str, low: int, high: int, names: tuple[str, ...], field: str) -> int:
    if text in names:
        return names.index(text) + (1 if names is _MONTHS else 0)
    if not text.isdigit():
        raise CronError(f"{field}: {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{field}: {value} is outside {low}-{high}")
    return value


def check_cron(expression: str) -> None:
    """Raise CronError naming the field when ``expression`` is not valid cron."""
    parts = expression.lower().split()
    if len(parts) != 5:
        raise CronError(
            f"{expression!r} must have 5 fields (minute hour day month weekday), not {len(parts)}"
        )
    for text, (field, low, high, names) in zip(parts, _FIELDS, strict=True):
        for item in text.split(","):
            match = _ITEM.fullmatch(item)
            if match is None:
                raise CronError(f"{field}: {item!r} is not valid cron syntax")
            base, step = match.groups()
            if step is not None and int(step) == 0:
                raise CronError(f"{field}: a step of 0 is not allowed")
            if base == "*":
                continue
            bounds = [_number(b, low, high, names, field) for b in base.split("-")]
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                raise CronError(f"{field}: range {base!r} runs backwards")
