"""Flows more than one test package publishes."""

from __future__ import annotations

from typing import Any

# Greets ``name`` (an input, "world" by default) into the output ``greeting``.
HELLO: dict[str, Any] = {
    "format": "flow/v1",
    "id": "hello",
    "values": {
        "name": {"type": "string", "access": "input", "default": "world"},
        "greeting": {"type": "string", "access": "output"},
    },
    "start": "greet",
    "elements": {
        "greet": {
            "type": "operator",
            "operations": [{"set": "greeting", "to": "Hello, {{ name }}!"}],
            "next": "done",
        },
        "done": {"type": "end"},
    },
}
