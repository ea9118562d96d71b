"""Every task has an owner: no fire-and-forget ``create_task`` anywhere in agent/.

Long-lived tasks start in a ``TaskGroup`` (``group.create_task``).  A bare
``asyncio.create_task``/``ensure_future``/``loop.create_task`` is allowed
only where the same function waits for the task it made (a race of two
waits, cut short by a stop): those places are listed here, and each must
still ``wait``/``gather`` in that function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import agent

AGENT = Path(agent.__file__).parent
SPAWNERS = frozenset({"create_task", "ensure_future"})
# (module, function): a task made and awaited within the function.
SCOPED = frozenset({("link/client.py", "_connect"), ("api/serve.py", "_stop")})


def _receiver(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return ast.unparse(func.value)
    return ""


def spawns() -> list[tuple[str, str, int, str]]:
    """(module, enclosing function, line, receiver) of every task-making call."""
    found = []
    for path in sorted(AGENT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = path.relative_to(AGENT).as_posix()
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if not isinstance(node, ast.Call):
                    continue
                name = (
                    node.func.attr
                    if isinstance(node.func, ast.Attribute)
                    else getattr(node.func, "id", "")
                )
                if name in SPAWNERS:
                    found.append((module, func.name, node.lineno, _receiver(node)))
    return found


def test_tasks_are_made_by_task_groups_or_awaited_where_they_are_made() -> None:
    found = spawns()
    assert any(receiver == "group" for _, _, _, receiver in found)  # the scan sees the supervisor
    orphans = [
        f"agent/{module}:{line} {receiver or '?'}.create_task in {function}()"
        for module, function, line, receiver in found
        if "group" not in receiver.lower() and (module, function) not in SCOPED
    ]
    assert orphans == []


def test_the_scoped_exceptions_still_wait_for_their_tasks() -> None:
    for module, function in SCOPED:
        tree = ast.parse((AGENT / module).read_text(encoding="utf-8"))
        body = next(
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function
        )
        source = ast.unparse(body)
        assert "gather(" in source and "wait(" in source, (module, function)
