"""The real control plane and a real agent, in this process, on 127.0.0.1.

The parts live in ``tests.support`` (``Cp``, ``AgentUnderTest``, the waits);
this module names them for the link tests and keeps the flows they share.
Nothing is mocked.
"""

from __future__ import annotations

from typing import Any

from tests.support.agent import AgentUnderTest, paired_agent
from tests.support.controlplane import Cp, running_cp
from tests.support.flows import HELLO
from tests.support.net import free_port
from tests.support.waits import STEP, until, within

PAGE: dict[str, Any] = {
    "format": "flow/v1",
    "id": "approve",
    "values": {"note": {"type": "string", "access": "output", "default": "secret-ish"}},
    "start": "ask",
    "elements": {
        "ask": {
            "type": "page",
            "title": "Note: {{ note }}",
            "fields": [{"value": "note", "label": "Note"}],
            "outcomes": [{"id": "ok", "next": "done"}],
        },
        "done": {"type": "end"},
    },
}


def wait_flow(seconds: float) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "sleepy",
        "start": "nap",
        "elements": {
            "nap": {"type": "wait", "seconds": seconds, "next": "done"},
            "done": {"type": "end"},
        },
    }


__all__ = [
    "HELLO",
    "PAGE",
    "STEP",
    "AgentUnderTest",
    "Cp",
    "free_port",
    "paired_agent",
    "running_cp",
    "until",
    "wait_flow",
    "within",
]
