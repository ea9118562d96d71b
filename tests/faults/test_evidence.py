"""The evidence the fault suite borrows from other tests still exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .evidence import EVIDENCE

ROOT = Path(__file__).resolve().parents[2]
NODES = sorted({node for nodes in EVIDENCE.values() for node in nodes})


@pytest.mark.parametrize("node", NODES)
def test_evidence_test_exists(node: str) -> None:
    """Every test named as evidence for a case is a test function in its file."""
    path, _, name = node.partition("::")
    tree = ast.parse((ROOT / path).read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert name in names, f"{node} is gone: update tests/faults/evidence.py"
