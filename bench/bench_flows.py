"""The flows the benchmarks run (flow/v1 documents as Python data)."""

from __future__ import annotations

from typing import Any

# Ten elements; a run visits eight or nine of them (the discount is taken
# when net >= 500).  bench/prefect_flow.py has the same steps in Python.
TEN_STEPS: dict[str, Any] = {
    "format": "flow/v1",
    "id": "bench-ten",
    "version": 1,
    "values": {
        "amount": {"type": "number", "access": "input", "default": 0},
        "fee": {"type": "number", "access": "input", "default": 2.5},
        "total": {"type": "number"},
        "tax": {"type": "number"},
        "net": {"type": "number"},
        "score": {"type": "number"},
        "tier": {"type": "string", "default": "std"},
        "approved": {"type": "boolean", "access": "output", "default": False},
        "payable": {"type": "number", "access": "output"},
    },
    "start": "calc",
    "elements": {
        "calc": {
            "type": "operator",
            "operations": [{"set": "total", "to": {"expr": "amount * 1.2 + fee"}}],
            "next": "valid",
        },
        "valid": {
            "type": "decision",
            "outcomes": [
                {
                    "id": "ok",
                    "next": "tax",
                    "when": {"left": {"ref": "total"}, "op": "gt", "right": 0},
                },
                {"id": "bad", "next": "invalid"},
            ],
        },
        "tax": {
            "type": "operator",
            "operations": [
                {"set": "tax", "to": {"expr": "total * 0.2"}},
                {"set": "net", "to": {"expr": "total - tax"}},
            ],
            "next": "size",
        },
        "size": {
            "type": "decision",
            "outcomes": [
                {
                    "id": "big",
                    "next": "discount",
                    "when": {"left": {"expr": "net"}, "op": "gte", "right": 500},
                },
                {"id": "small", "next": "score"},
            ],
        },
        "discount": {
            "type": "operator",
            "operations": [
                {"set": "net", "to": {"expr": "net * 0.95"}},
                {"set": "tier", "to": "gold"},
            ],
            "next": "score",
        },
        "score": {
            "type": "operator",
            "operations": [
                {"set": "score", "to": {"expr": "net / 10 + (5 if tier == 'gold' else 0)"}},
            ],
            "next": "check",
        },
        "check": {
            "type": "decision",
            "outcomes": [
                {
                    "id": "yes",
                    "next": "approve",
                    "when": {
                        "all": [
                            {"left": {"ref": "score"}, "op": "gt", "right": 10},
                            {"left": {"ref": "tier"}, "op": "ne", "right": "blocked"},
                        ]
                    },
                },
                {"id": "no", "next": "done"},
            ],
        },
        "approve": {
            "type": "operator",
            "operations": [
                {"set": "approved", "to": True},
                {"set": "payable", "to": {"expr": "net"}},
            ],
            "next": "done",
        },
        "done": {"type": "end"},
        "invalid": {"type": "end", "status": "failed", "message": "amount must be positive"},
    },
}

# An operator and a decision in a loop: 2 * limit + 1 visits in one run.
LOOP: dict[str, Any] = {
    "format": "flow/v1",
    "id": "bench-loop",
    "version": 1,
    "values": {
        "limit": {"type": "number", "access": "input", "default": 10},
        "i": {"type": "number", "default": 0},
        "acc": {"type": "number", "access": "output", "default": 0},
    },
    "start": "bump",
    "elements": {
        "bump": {
            "type": "operator",
            "operations": [{"add": "i", "by": 1}, {"set": "acc", "to": {"expr": "acc + i * 2"}}],
            "next": "more",
        },
        "more": {
            "type": "decision",
            "outcomes": [
                {
                    "id": "again",
                    "next": "bump",
                    "when": {"left": {"ref": "i"}, "op": "lt", "right": {"ref": "limit"}},
                },
                {"id": "stop", "next": "done"},
            ],
        },
        "done": {"type": "end"},
    },
}

# The second element is a page: every run stops there, waiting for a person.
PAGE: dict[str, Any] = {
    "format": "flow/v1",
    "id": "bench-page",
    "version": 1,
    "values": {
        "amount": {"type": "number", "access": "input", "default": 0},
        "total": {"type": "number"},
        "note": {"type": "string"},
    },
    "start": "calc",
    "elements": {
        "calc": {
            "type": "operator",
            "operations": [{"set": "total", "to": {"expr": "amount * 1.2"}}],
            "next": "review",
        },
        "review": {
            "type": "page",
            "title": "Review {{ total }}",
            "fields": [{"value": "note", "label": "Note"}],
            "outcomes": [{"id": "ok", "label": "OK", "next": "done"}],
        },
        "done": {"type": "end"},
    },
}
