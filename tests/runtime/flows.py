"""Small flows the runtime tests share."""

from __future__ import annotations

from typing import Any


def flow(
    fid: str,
    elements: dict[str, Any],
    *,
    values: dict[str, Any] | None = None,
    start: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": fid,
        "values": values or {},
        "start": start or next(iter(elements)),
        "elements": elements,
        **extra,
    }


PAGE = flow(
    "approve",
    {
        "ask": {
            "type": "page",
            "title": "Approve {{ amount }}?",
            "fields": [{"value": "note", "label": "Note", "required": True}],
            "outcomes": [
                {"id": "yes", "label": "Yes", "next": "ok"},
                {"id": "no", "label": "No", "next": "ko"},
            ],
        },
        "ok": {"type": "operator", "operations": [{"set": "approved", "to": True}], "next": "done"},
        "ko": {"type": "end", "status": "failed", "message": "rejected: {{ note }}"},
        "done": {"type": "end"},
    },
    values={
        "amount": {"type": "number", "access": "input", "default": 10},
        "note": {"type": "string", "access": "output"},
        "approved": {"type": "boolean", "access": "output", "default": False},
    },
)

CHILD = flow(
    "child",
    {
        "calc": {
            "type": "operator",
            "operations": [{"set": "doubled", "to": {"expr": "n * 2"}}],
            "next": "done",
        },
        "done": {"type": "end"},
    },
    values={
        "n": {"type": "number", "access": "input"},
        "doubled": {"type": "number", "access": "output"},
    },
)

PARENT = flow(
    "parent",
    {
        "call": {
            "type": "subflow",
            "flow": "child",
            "inputs": {"n": {"ref": "x"}},
            "outputs": {"result": "doubled"},
            "next": "done",
            "fault": "oops",
        },
        "oops": {
            "type": "operator",
            "operations": [{"set": "why", "to": {"ref": "fault.message"}}],
            "next": "done",
        },
        "done": {"type": "end"},
    },
    values={
        "x": {"type": "number", "access": "input", "default": 21},
        "result": {"type": "number", "access": "output"},
        "why": {"type": "string", "access": "output"},
    },
)

PAGE_PARENT = flow(
    "page-parent",
    {
        "call": {
            "type": "subflow",
            "flow": "approve",
            "inputs": {"amount": 99},
            "outputs": {"ok": "approved"},
            "next": "done",
        },
        "done": {"type": "end"},
    },
    values={"ok": {"type": "boolean", "access": "output"}},
)

TIMER = flow(
    "timer",
    {
        "pause": {"type": "wait", "seconds": 3600, "next": "after"},
        "after": {"type": "operator", "operations": [{"add": "n", "by": 1}], "next": "done"},
        "done": {"type": "end"},
    },
    values={"n": {"type": "number", "access": "output", "default": 0}},
)

RECURSIVE = flow(
    "again",
    {
        "call": {"type": "subflow", "flow": "again", "next": "done"},
        "done": {"type": "end"},
    },
)
