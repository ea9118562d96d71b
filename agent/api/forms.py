"""Form controls of the player page: flow values to HTML inputs and back.

One rule per flow type: ``string`` is a text box, ``number`` a number box,
``boolean`` a checkbox (posted with a hidden "false" before it, so an
unchecked box still says so), ``datetime`` a ``datetime-local`` box read as
UTC, and ``object``/``list`` a textarea of JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from multidict import MultiDictProxy

from agent.flow import values as V

CONTROLS: Mapping[str, str] = {
    "string": "text",
    "number": "number",
    "boolean": "checkbox",
    "datetime": "datetime-local",
    "object": "json",
    "list": "json",
}
HINTS: Mapping[str, str] = {
    "datetime": "UTC",
    "object": 'a JSON object, e.g. {"key": "value"}',
    "list": "a JSON list, e.g. [1, 2]",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Widget:
    name: str  # the form field's name
    id: str  # the HTML id its <label for> points at
    label: str
    control: str  # text, number, checkbox, datetime-local or json
    value: str
    checked: bool
    required: bool
    hint: str | None
    error: str | None


def display(type_: str, value: Any) -> str:
    """A value as the text of its control."""
    if value is None:
        return ""
    if type_ == "datetime":
        try:
            moment = V.parse_datetime(str(value)).astimezone(UTC)
        except V.ConversionError:
            return str(value)
        pattern = "%Y-%m-%dT%H:%M" if moment.second == 0 else "%Y-%m-%dT%H:%M:%S"
        return moment.strftime(pattern)
    if type_ in ("object", "list"):
        return json.dumps(V.to_plain(value), ensure_ascii=False, indent=2)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(V.to_plain(value))


def widget(
    *,
    prefix: str,
    name: str,
    label: str,
    type_: str,
    value: Any,
    required: bool,
    submitted: str | None = None,
    error: str | None = None,
) -> Widget:
    """A control for one value; ``submitted`` (the text a person sent) wins over ``value``."""
    control = CONTROLS.get(type_, "text")
    text = submitted if submitted is not None else display(type_, value)
    checked = (
        ((submitted in ("true", "on")) if submitted is not None else bool(value))
        if control == "checkbox"
        else False
    )
    return Widget(
        name=f"{prefix}.{name}",
        id=f"{prefix}-{name}",
        label=label,
        control=control,
        value=text,
        checked=checked,
        # A required checkbox would have to be ticked; a flow's required
        # boolean may well be false.
        required=required and control != "checkbox",
        hint=HINTS.get(type_),
        error=error,
    )


def submitted_text(form: MultiDictProxy[Any], name: str) -> str | None:
    """The last value posted under ``name`` (a ticked checkbox follows its hidden "false")."""
    items = [v for v in form.getall(name, []) if isinstance(v, str)]
    return items[-1] if items else None


def from_form(type_: str, text: str | None) -> Any:
    """What a control posted, as a raw value for the engine to convert.

    An empty box of a non-text type means "no value" (null), since "" is not a
    number, datetime or JSON document.
    """
    if type_ == "boolean":
        return text in ("true", "on")
    if text is None:
        return None
    if type_ == "string":
        return text
    return text if text.strip() else None


def check(type_: str, raw: Any, *, required: bool) -> str | None:
    """The message to show beside one posted field, or None when it would be accepted."""
    try:
        converted = V.convert(type_, raw)
    except V.ConversionError as exc:
        return str(exc)
    if required and V.is_empty(converted):
        return "Required: fill this in."
    return None
