"""Building blocks of validation: paths, the issue collector, operands.

Operands, rules and render trees are parsed here; elements in ``parse_elements.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import values as V
from .expressions import (
    Compiled,
    ExpressionError,
    compile_expression,
    compile_template,
    is_template,
)
from .model import Issue, Operand, Rule
from .rules import OPS

_PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_REF: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*((\.[A-Za-z0-9_-]+)|(\[\d+\]))*")
_REF_PART: Final = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")
OPERAND_KEYS: Final = frozenset({"ref", "expr", "literal"})


@dataclass(frozen=True, slots=True)
class Path:
    parts: tuple[str | int, ...] = ()

    def __truediv__(self, part: str | int) -> Path:
        return Path((*self.parts, part))

    def __str__(self) -> str:
        if not self.parts:
            return "(document)"
        out = ""
        for part in self.parts:
            if isinstance(part, int):
                out += f"[{part}]"
            elif not _PLAIN_KEY.fullmatch(part):
                # "", "a.b" or "my field" would make the path ambiguous or empty
                out += f"[{json.dumps(part, ensure_ascii=False)}]"
            else:
                out += f".{part}" if out else part
        return out


@dataclass(slots=True)
class Checker:
    """Collects every issue of a document instead of stopping at the first."""

    issues: list[Issue] = field(default_factory=list)

    def error(self, path: Path, message: str) -> None:
        self.issues.append(Issue(str(path), message))

    def obj(
        self, value: Any, path: Path, *, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Any] | None:
        """A JSON object with only ``allowed`` keys and every ``required`` one."""
        if not isinstance(value, dict):
            self.error(path, f"expected an object, got {V.describe(value)}")
            return None
        allowed_set = set(allowed)
        for key in value:
            if key not in allowed_set:
                self.error(
                    path / key, f"unknown field (allowed here: {', '.join(sorted(allowed_set))})"
                )
        for key in required:
            if key not in value:
                self.error(path, f"missing required field '{key}'")
        return value

    def string(
        self, value: Any, path: Path, *, pattern: re.Pattern[str] | None = None, what: str = ""
    ) -> str | None:
        if not isinstance(value, str):
            self.error(path, f"expected a string, got {V.describe(value)}")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.error(path, f"{value!r} is not a valid {what or 'name'} ({pattern.pattern})")
            return None
        return value

    def number(
        self, value: Any, path: Path, *, minimum: float, maximum: float, exclusive_min: bool = False
    ) -> float | None:
        if not V.is_number(value):
            self.error(path, f"expected a number, got {V.describe(value)}")
            return None
        try:
            # Compared as a Decimal: float() of a 400-digit integer overflows.
            number = V.to_decimal(value)
        except V.ConversionError as exc:
            self.error(path, str(exc))
            return None
        if number < minimum or (exclusive_min and number == minimum) or number > maximum:
            low = f"above {minimum:g}" if exclusive_min else f"at least {minimum:g}"
            self.error(path, f"must be {low} and at most {maximum:g}")
            return None
        return float(number)

    def integer(self, value: Any, path: Path, *, minimum: int, maximum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected a whole number, got {V.describe(value)}")
            return None
        if not minimum <= value <= maximum:
            self.error(path, f"must be between {minimum} and {maximum}")
            return None
        return value

    def boolean(self, value: Any, path: Path) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {V.describe(value)}")
            return None
        return value


@dataclass(frozen=True, slots=True)
class Scope:
    """The value names an operand may read at one place of the document."""

    values: Mapping[str, str]  # name -> type, ``fault`` included
    allow_secrets: bool = False

    def check_names(self, checker: Checker, path: Path, compiled: Compiled) -> None:
        for name in sorted(compiled.names):
            kind = self.values.get(name)
            if kind is None:
                checker.error(path, f"unknown value '{name}' in {compiled.source!r}")
            elif kind == "secret" and not self.allow_secrets:
                checker.error(path, f"secret value '{name}' can only be used in connector headers")


def parse_ref(
    checker: Checker, path: Path, text: Any, scope: Scope
) -> tuple[str | int, ...] | None:
    if not isinstance(text, str) or not _REF.fullmatch(text):
        checker.error(
            path, f"{text!r} is not a value path like 'customer.address.city' or 'lines[0]'"
        )
        return None
    root = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text)
    assert root is not None
    name = root.group(0)
    parts: list[str | int] = [name]
    for match in _REF_PART.finditer(text, root.end()):
        key, index = match.groups()
        parts.append(int(index) if index is not None else key)
    kind = scope.values.get(name)
    if kind is None:
        checker.error(path, f"unknown value '{name}'")
        return None
    if kind == "secret" and not scope.allow_secrets:
        checker.error(path, f"secret value '{name}' can only be used in connector headers")
        return None
    return tuple(parts)


def _compile(
    checker: Checker, path: Path, source: Any, scope: Scope, compiler: Callable[[str], Compiled]
) -> Compiled | None:
    if not isinstance(source, str):
        checker.error(path, f"expected a string, got {V.describe(source)}")
        return None
    try:
        compiled = compiler(source)
    except ExpressionError as exc:
        checker.error(path, str(exc).splitlines()[0])
        return None
    scope.check_names(checker, path, compiled)
    return compiled


def template(checker: Checker, path: Path, source: Any, scope: Scope) -> Operand | None:
    """A string field that may hold a template (titles, content, messages)."""
    if not isinstance(source, str):
        checker.error(path, f"expected a string, got {V.describe(source)}")
        return None
    if not is_template(source):
        return Operand("literal", source)
    compiled = _compile(checker, path, source, scope, compile_template)
    return Operand("template", source, compiled) if compiled else None


def is_operand_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in OPERAND_KEYS


def parse_operand(checker: Checker, path: Path, value: Any, scope: Scope) -> Operand | None:
    if is_operand_object(value):
        ((key, inner),) = value.items()
        if key == "ref":
            parts = parse_ref(checker, path / "ref", inner, scope)
            return Operand("ref", parts) if parts else None
        if key == "expr":
            compiled = _compile(checker, path / "expr", inner, scope, compile_expression)
            return Operand("expr", inner, compiled) if compiled else None
        return _literal(checker, path / "literal", inner)
    if isinstance(value, str) and is_template(value):
        return template(checker, path, value, scope)
    return _literal(checker, path, value)


def _normalized(checker: Checker, path: Path, value: Any) -> Any:
    try:
        return V.normalize(value)
    except V.ConversionError as exc:  # NaN or Infinity, which Python's json accepts
        checker.error(path, str(exc))
        return None


def _literal(checker: Checker, path: Path, value: Any) -> Operand | None:
    before = len(checker.issues)
    normalized = _normalized(checker, path, value)
    return Operand("literal", normalized) if len(checker.issues) == before else None


def parse_render(checker: Checker, path: Path, value: Any, scope: Scope) -> Any:
    """A render tree: operands anywhere inside, other containers kept as they are."""
    if is_operand_object(value) or (isinstance(value, str) and is_template(value)):
        return parse_operand(checker, path, value, scope)
    if isinstance(value, dict):
        return {k: parse_render(checker, path / k, v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [parse_render(checker, path / i, v, scope) for i, v in enumerate(value)]
    return _normalized(checker, path, value)


def parse_rule(checker: Checker, path: Path, value: Any, scope: Scope) -> Rule | None:
    if not isinstance(value, dict):
        checker.error(path, f"expected a rule object, got {V.describe(value)}")
        return None
    for group in ("all", "any"):
        if group in value:
            checker.obj(value, path, allowed=[group])
            items = value[group]
            if not isinstance(items, list) or not items:
                checker.error(path / group, "expected a non-empty list of rules")
                return None
            rules = [parse_rule(checker, path / group / i, r, scope) for i, r in enumerate(items)]
            return Rule(group, rules=tuple(r for r in rules if r)) if all(rules) else None
    if "not" in value:
        checker.obj(value, path, allowed=["not"])
        inner = parse_rule(checker, path / "not", value["not"], scope)
        return Rule("not", rules=(inner,)) if inner else None
    body = checker.obj(
        value, path, allowed=["left", "op", "right"], required=["left", "op", "right"]
    )
    if body is None or not {"left", "op", "right"} <= body.keys():
        return None
    op = body["op"]
    if not isinstance(op, str) or op not in OPS:
        checker.error(path / "op", f"unknown operator {op!r} (one of: {', '.join(sorted(OPS))})")
        return None
    left = parse_operand(checker, path / "left", body["left"], scope)
    right = parse_operand(checker, path / "right", body["right"], scope)
    if (
        op == "is_empty"
        and right is not None
        and (right.kind != "literal" or not isinstance(right.value, bool))
    ):
        checker.error(path / "right", "is_empty takes true or false on the right")
        return None
    if left is None or right is None:
        return None
    return Rule(op, left, right)
