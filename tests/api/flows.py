"""Flows the API tests publish into a real store."""

from __future__ import annotations

from typing import Any


def flow(
    fid: str,
    elements: dict[str, Any],
    *,
    values: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": fid,
        "version": 1,
        "values": values or {},
        "start": next(iter(elements)),
        "elements": elements,
        **extra,
    }


# A page with one field of every type a person can fill in.
FORM = flow(
    "form",
    {
        "ask": {
            "type": "page",
            "label": "Ask the manager",
            "title": "Approve {{ amount }} for {{ who }}?",
            "content": "Check the amount before you decide.",
            "fields": [
                {"value": "note", "label": "Comment", "required": True},
                {"value": "amount", "label": "Amount", "required": True},
                {"value": "urgent", "label": "Urgent", "required": False},
                {"value": "due", "label": "Due date", "required": False},
                {"value": "tags", "label": "Tags", "required": False},
            ],
            "outcomes": [
                {"id": "approve", "label": "Approve", "next": "mark"},
                {"id": "reject", "label": "Reject", "next": "rejected"},
            ],
        },
        "mark": {
            "type": "operator",
            "label": "Mark approved",
            "operations": [{"set": "approved", "to": True}],
            "next": "done",
        },
        "rejected": {"type": "end", "status": "failed", "message": "rejected: {{ note }}"},
        "done": {"type": "end", "label": "Done"},
    },
    values={
        "who": {"type": "string", "access": "input", "default": "ACME"},
        "amount": {"type": "number", "access": "input_output", "default": 10},
        "urgent": {"type": "boolean", "access": "input", "default": False},
        "due": {"type": "datetime", "access": "input"},
        "tags": {"type": "list", "access": "input", "default": []},
        "note": {"type": "string", "access": "output"},
        "approved": {"type": "boolean", "access": "output", "default": False},
    },
    name="Invoice approval",
)

STEP = flow(
    "step",
    {
        "read": {
            "type": "step",
            "content": "Read the policy, {{ who }}.",
            "outcomes": [{"id": "ok", "label": "I have read it", "next": "done"}],
        },
        "done": {"type": "end"},
    },
    values={"who": {"type": "string", "access": "input", "default": "you"}},
)

TIMER = flow(
    "timer",
    {
        "pause": {"type": "wait", "label": "Cool off", "seconds": 3600, "next": "done"},
        "done": {"type": "end"},
    },
    name="Cooling-off period",
)

DOUBLE = flow(
    "double",
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
    triggers=[{"webhook": True, "secret": "hook-secret"}],
)

OPEN_HOOK = flow(
    "open-hook",
    {"done": {"type": "end"}},
    values={"n": {"type": "number", "access": "input"}},
    triggers=[{"webhook": True}],
)

UNCONFIGURED_HOOK = flow(
    "unconfigured-hook",
    {"done": {"type": "end"}},
    triggers=[{"webhook": True, "secret": "nobody-set-this"}],
)

FAILS = flow(
    "fails",
    {"stop": {"type": "end", "status": "failed", "message": "the books do not balance"}},
)

PARENT = flow(
    "parent",
    {
        "call": {
            "type": "subflow",
            "label": "Ask for approval",
            "flow": "form",
            "inputs": {"amount": 99, "who": "Parent Ltd"},
            "outputs": {"ok": "approved"},
            "next": "done",
        },
        "done": {"type": "end"},
    },
    values={"ok": {"type": "boolean", "access": "output"}},
)

ALL = [FORM, STEP, TIMER, DOUBLE, OPEN_HOOK, UNCONFIGURED_HOOK, FAILS, PARENT]
