"""The flow/v1 grammar of elements: element fields, outcomes, operations, messages.

``ElementParser`` holds what the whole parse shares (the checker, the value
types, element ids and connectors declared so far); ``parse.FlowParser``
adds the top level on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from . import values as V
from .connector_types import CONNECTOR_TYPES
from .expressions import ExpressionError, compile_template
from .model import (
    HTTP_METHODS,
    SLUG,
    VALUE_NAME,
    Connector,
    Element,
    Field,
    Operation,
    Outcome,
)
from .schema import (
    Checker,
    Path,
    Scope,
    parse_operand,
    parse_ref,
    parse_render,
    parse_rule,
    template,
)

COMMON: Final = ("type", "label")
ELEMENT_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "decision": ("outcomes",),
    "operator": ("operations", "next"),
    "message": (
        "connector",
        "action",
        "body",
        "query",
        "headers",
        "inputs",
        "outputs",
        "retry",
        "timeout",
        "next",
        "fault",
    ),
    "page": ("title", "content", "fields", "outcomes"),
    "step": ("content", "outcomes"),
    "wait": ("seconds", "until", "next"),
    "subflow": ("flow", "inputs", "outputs", "next", "fault"),
    "end": ("status", "message"),
}
LEAVES_BY_NEXT: Final = frozenset({"operator", "message", "wait", "subflow"})
LEAVES_BY_OUTCOMES: Final = frozenset({"decision", "page", "step"})
ARITHMETIC: Final = ("add", "subtract", "multiply", "divide")
OPERATIONS: Final[Mapping[str, str | None]] = {
    "set": "to",
    "add": "by",
    "subtract": "by",
    "multiply": "by",
    "divide": "by",
    "append": "item",
    "clear": None,
}


class ElementParser:
    """Parses a flow's ``elements`` against the values and connectors declared before them."""

    def __init__(self, checker: Checker) -> None:
        self.c = checker
        self.value_types: dict[str, str] = {"fault": "object"}
        self.element_ids: set[str] = set()
        self.connectors: dict[str, Connector] = {}

    def _headers(self, raw: Any, path: Path, *, secrets: bool) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.c.error(
                path, f"expected an object of header names to strings, got {V.describe(raw)}"
            )
            return {}
        scope = Scope(self.value_types, allow_secrets=secrets)
        return {k: parse_render(self.c, path / k, v, scope) for k, v in raw.items()}

    # -- elements ------------------------------------------------------------
    def _target(self, value: Any, path: Path) -> str | None:
        if not isinstance(value, str):
            self.c.error(path, f"expected an element id, got {V.describe(value)}")
            return None
        if value not in self.element_ids:
            self.c.error(path, f"unknown element {value!r}")
            return None
        return value

    def _elements(self, raw: Any, path: Path) -> dict[str, Element]:
        if not isinstance(raw, dict):
            self.c.error(path, f"expected an object of elements, got {V.describe(raw)}")
            return {}
        if not raw:
            self.c.error(path, "a flow needs at least one element")
        out: dict[str, Element] = {}
        for element_id, spec in raw.items():
            here = path / element_id
            if not SLUG.fullmatch(element_id):
                self.c.error(here, f"{element_id!r} is not a valid element id ({SLUG.pattern})")
                continue
            element = self._element(element_id, spec, here)
            if element is not None:
                out[element_id] = element
        return out

    def _element(self, element_id: str, spec: Any, path: Path) -> Element | None:
        if not isinstance(spec, dict):
            self.c.error(path, f"expected an element object, got {V.describe(spec)}")
            return None
        type_ = spec.get("type")
        if not isinstance(type_, str) or type_ not in ELEMENT_FIELDS:
            if "type" not in spec:
                self.c.error(path, "missing required field 'type'")
            else:
                self.c.error(
                    path / "type",
                    f"unknown element type {type_!r} (one of: {', '.join(ELEMENT_FIELDS)})",
                )
            return None
        assert isinstance(type_, str)
        allowed = COMMON + ELEMENT_FIELDS[type_]
        self.c.obj(spec, path, allowed=allowed)
        fields: dict[str, Any] = {"id": element_id, "type": type_}
        if "label" in spec:
            fields["label"] = self.c.string(spec["label"], path / "label")
        if type_ in LEAVES_BY_NEXT:
            if "next" not in spec:
                self.c.error(
                    path, "missing required field 'next' (every element but end must leave)"
                )
            else:
                fields["next"] = self._target(spec["next"], path / "next")
        if "fault" in spec and "fault" in ELEMENT_FIELDS[type_]:
            fields["fault"] = self._target(spec["fault"], path / "fault")
        if type_ in LEAVES_BY_OUTCOMES:
            fields["outcomes"] = self._outcomes(
                spec.get("outcomes"), path / "outcomes", buttons=type_ != "decision"
            )
        extra = getattr(self, f"_el_{type_}")(spec, path)
        if extra is None:
            return None
        fields.update(extra)
        return Element(**fields)

    def _outcomes(self, raw: Any, path: Path, *, buttons: bool) -> tuple[Outcome, ...]:
        if not isinstance(raw, list) or not raw:
            if raw is None:
                self.c.error(
                    (path.parts and Path(path.parts[:-1])) or path,
                    "missing required field 'outcomes' (every element but end must leave)",
                )
            else:
                self.c.error(path, "expected a non-empty list of outcomes")
            return ()
        scope = Scope(self.value_types)
        seen: set[str] = set()
        out: list[Outcome] = []
        for i, spec in enumerate(raw):
            here = path / i
            allowed = ("id", "label", "next") if buttons else ("id", "label", "next", "when")
            body = self.c.obj(
                spec, here, allowed=allowed, required=("id", "next") if buttons else ("next",)
            )
            if body is None:
                continue
            oid = body.get("id")
            if (
                oid is not None
                and self.c.string(oid, here / "id", pattern=SLUG, what="outcome id") is not None
            ):
                if oid in seen:
                    self.c.error(here / "id", f"duplicate outcome id {oid!r}")
                seen.add(oid)
            label = body.get("label")
            if label is not None:
                self.c.string(label, here / "label")
            target = self._target(body["next"], here / "next") if "next" in body else None
            when = None
            if "when" in body and not buttons:
                when = parse_rule(self.c, here / "when", body["when"], scope)
            if target is not None:
                out.append(
                    Outcome(
                        target,
                        oid if isinstance(oid, str) else None,
                        label if isinstance(label, str) else None,
                        when,
                    )
                )
        return tuple(out)

    def _el_decision(self, spec: dict[str, Any], path: Path) -> dict[str, Any]:
        return {}

    def _el_end(self, spec: dict[str, Any], path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        status = spec.get("status", "completed")
        if status not in ("completed", "failed"):
            self.c.error(path / "status", f"must be 'completed' or 'failed', got {status!r}")
        out["status"] = status
        if "message" in spec:
            out["message"] = template(
                self.c, path / "message", spec["message"], Scope(self.value_types)
            )
        return out

    def _el_page(self, spec: dict[str, Any], path: Path) -> dict[str, Any]:
        scope = Scope(self.value_types)
        out: dict[str, Any] = {}
        for key in ("title", "content"):
            if key in spec:
                out[key] = template(self.c, path / key, spec[key], scope)
        fields: list[Field] = []
        raw = spec.get("fields", [])
        if not isinstance(raw, list):
            self.c.error(path / "fields", f"expected a list of fields, got {V.describe(raw)}")
            raw = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            here = path / "fields" / i
            body = self.c.obj(
                item, here, allowed=("value", "label", "required"), required=("value",)
            )
            if body is None or "value" not in body:
                continue
            name = body["value"]
            kind = self.value_types.get(name) if isinstance(name, str) else None
            if kind is None or name == "fault":
                self.c.error(here / "value", f"unknown value {name!r}")
                continue
            if kind == "secret":
                self.c.error(here / "value", f"secret value {name!r} cannot be a page field")
                continue
            if name in seen:
                self.c.error(here / "value", f"value {name!r} is already a field of this page")
            seen.add(name)
            label = body.get("label", name)
            if self.c.string(label, here / "label") is None:
                label = name
            required = body.get("required", False)
            if self.c.boolean(required, here / "required") is None:
                required = False
            fields.append(Field(name, label, required))
        out["fields"] = tuple(fields)
        return out

    def _el_step(self, spec: dict[str, Any], path: Path) -> dict[str, Any]:
        if "content" in spec:
            return {
                "content": template(
                    self.c, path / "content", spec["content"], Scope(self.value_types)
                )
            }
        return {}

    def _el_wait(self, spec: dict[str, Any], path: Path) -> dict[str, Any]:
        scope = Scope(self.value_types)
        has_seconds, has_until = "seconds" in spec, "until" in spec
        if has_seconds == has_until:
            self.c.error(path, "a wait needs exactly one of 'seconds' or 'until'")
            return {}
        if has_seconds:
            raw = spec["seconds"]
            if not V.is_number(raw) and not isinstance(raw, dict):
                self.c.error(
                    path / "seconds", f"expected a number of seconds, got {V.describe(raw)}"
                )
                return {}
            seconds = parse_operand(self.c, path / "seconds", raw, scope)
            if seconds and seconds.kind == "literal":
                # 30 and {"literal": 30} alike: a literal is known now.
                value = seconds.value
                if not V.is_number(value):
                    got = V.describe(value)
                    self.c.error(path / "seconds", f"expected a number of seconds, got {got}")
                    return {}
                ten_years = 10 * 365 * 86400
                if self.c.number(value, path / "seconds", minimum=0, maximum=ten_years) is None:
                    return {}
            return {"seconds": seconds}
        until = parse_operand(self.c, path / "until", spec["until"], scope)
        if until is not None and until.kind == "literal":
            # A literal is known now: refuse it now rather than fail every run.
            try:
                if until.value is None:
                    raise V.ConversionError("expected an ISO 8601 datetime, got null")
                V.convert("datetime", until.value)
            except V.ConversionError as exc:
                self.c.error(path / "until", str(exc))
                return {}
        return {"until": until}

    def _el_operator(self, spec: dict[str, Any], path: Path) -> dict[str, Any]:
        raw = spec.get("operations")
        if not isinstance(raw, list) or not raw:
            self.c.error(path / "operations", "expected a non-empty list of operations")
            return {}
        ops = [self._operation(item, path / "operations" / i) for i, item in enumerate(raw)]
        return {"operations": tuple(op for op in ops if op is not None)}

    def _operation(self, raw: Any, path: Path) -> Operation | None:
        if not isinstance(raw, dict):
            self.c.error(path, f"expected an operation object, got {V.describe(raw)}")
            return None
        kinds = [k for k in raw if k in OPERATIONS]
        if len(kinds) != 1:
            self.c.error(path, "an operation has exactly one of: " + ", ".join(OPERATIONS))
            return None
        op = kinds[0]
        arg = OPERATIONS[op]
        self.c.obj(raw, path, allowed=(op, arg) if arg else (op,), required=(arg,) if arg else ())
        scope = Scope(self.value_types)
        target_path = parse_ref(self.c, path / op, raw[op], scope)
        if target_path is None:
            return None
        root = str(target_path[0])
        root_type = self.value_types[root]
        if root == "fault":
            self.c.error(path / op, "the built-in 'fault' value is read-only")
            return None
        nested = len(target_path) > 1
        if nested and root_type not in ("object", "list"):
            self.c.error(path / op, f"{root!r} is a {root_type}: only objects and lists have parts")
            return None
        if not nested and op in ARITHMETIC and root_type != "number":
            self.c.error(path / op, f"{op} needs a number value, {root!r} is a {root_type}")
        if not nested and op == "append" and root_type != "list":
            self.c.error(path / op, f"append needs a list value, {root!r} is a {root_type}")
        operand = None
        if arg is not None and arg in raw:
            operand = parse_operand(self.c, path / arg, raw[arg], scope)
            if operand is not None and operand.kind == "literal" and not nested and op == "set":
                try:
                    V.check_assignable(root_type, operand.value)
                except V.ConversionError as exc:
                    self.c.error(path / arg, f"cannot set {root!r}: {exc}")
            if (
                operand is not None
                and operand.kind == "literal"
                and op in ARITHMETIC
                and (not V.is_number(operand.value))
            ):
                self.c.error(path / arg, f"{op} needs a number, got {V.describe(operand.value)}")
        return Operation(op, str(raw[op]), target_path, operand)

    def _outputs(
        self, raw: Any, path: Path, pattern: re.Pattern[str] | None, *, what: str
    ) -> dict[str, str]:
        if not isinstance(raw, dict):
            self.c.error(path, f"expected an object of value names, got {V.describe(raw)}")
            return {}
        out: dict[str, str] = {}
        for name, source in raw.items():
            here = path / name
            kind = self.value_types.get(name)
            if kind is None or name == "fault":
                self.c.error(here, f"unknown value {name!r}")
                continue
            if kind == "secret":
                self.c.error(here, f"secret value {name!r} is read-only")
                continue
            if self.c.string(source, here) is None:
                continue
            if pattern is not None and not pattern.fullmatch(source):
                self.c.error(here, f"{source!r} is not {what}")
                continue
            out[name] = source
        return out

    def _el_message(self, spec: dict[str, Any], path: Path) -> dict[str, Any] | None:
        scope = Scope(self.value_types)
        out: dict[str, Any] = {}
        name = spec.get("connector")
        if "connector" not in spec:
            self.c.error(path, "missing required field 'connector'")
        elif not isinstance(name, str) or name not in self.connectors:
            self.c.error(path / "connector", f"unknown connector {name!r}")
        connector = self.connectors.get(name) if isinstance(name, str) else None
        kind = CONNECTOR_TYPES.get(connector.type) if connector else None
        out["connector"] = name
        if kind is not None:
            for key in ("body", "query", "headers", "inputs"):
                if key in spec and key not in kind.element_fields:
                    self.c.error(
                        path / key,
                        f"a {connector.type} connector takes no "  # type: ignore[union-attr]
                        f"'{key}' (it takes: {', '.join(kind.element_fields)})",
                    )
        action = spec.get("action")
        if "action" not in spec:
            self.c.error(path, "missing required field 'action'")
        elif isinstance(action, str) and kind is not None:
            out.update(self._action(action, path / "action", kind))
        else:
            self.c.string(action, path / "action")
        for key in ("body", "query", "inputs"):
            if key in spec:
                out[key] = parse_render(self.c, path / key, spec[key], scope)
        if "query" in spec and not isinstance(spec["query"], dict):
            self.c.error(path / "query", "expected an object of query parameters")
        if "headers" in spec:
            out["headers"] = self._headers(spec["headers"], path / "headers", secrets=False)
        if "outputs" in spec:
            out["outputs"] = self._outputs(
                spec["outputs"],
                path / "outputs",
                kind.outputs if kind else None,
                what="one of status, headers.NAME, body, body.PATH",
            )
        if "retry" in spec:
            body = self.c.obj(spec["retry"], path / "retry", allowed=("attempts", "backoff"))
            if body is not None:
                if "attempts" in body:
                    out["retry_attempts"] = (
                        self.c.integer(
                            body["attempts"], path / "retry" / "attempts", minimum=1, maximum=20
                        )
                        or 1
                    )
                if "backoff" in body:
                    out["retry_backoff"] = (
                        self.c.number(
                            body["backoff"], path / "retry" / "backoff", minimum=0, maximum=300
                        )
                        or 0.0
                    )
        if "timeout" in spec:
            out["timeout"] = self.c.number(
                spec["timeout"], path / "timeout", minimum=0, maximum=3600, exclusive_min=True
            )
        return out

    def _action(self, action: str, path: Path, kind: Any) -> dict[str, Any]:
        if kind.action is None:
            return {"action": action}
        match = kind.action.fullmatch(action)
        if match is None or match.group(1) not in HTTP_METHODS:
            self.c.error(
                path,
                f"{action!r} is not 'METHOD /path' (methods: {', '.join(sorted(HTTP_METHODS))})",
            )
            return {}
        out: dict[str, Any] = {"action": action}
        if "{{" in action:
            try:
                compiled = compile_template(match.group(2))
            except ExpressionError as exc:
                self.c.error(path, str(exc).splitlines()[0])
                return {}
            Scope(self.value_types).check_names(self.c, path, compiled)
            out["action_path"] = compiled
        return out

    def _el_subflow(self, spec: dict[str, Any], path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "flow" not in spec:
            self.c.error(path, "missing required field 'flow'")
        else:
            out["flow"] = self.c.string(spec["flow"], path / "flow", pattern=SLUG, what="flow id")
        if "inputs" in spec:
            if not isinstance(spec["inputs"], dict):
                self.c.error(path / "inputs", "expected an object of the child's input values")
            else:
                for name in spec["inputs"]:
                    if not VALUE_NAME.fullmatch(name):
                        self.c.error(path / "inputs" / name, f"{name!r} is not a valid value name")
                out["inputs"] = parse_render(
                    self.c, path / "inputs", spec["inputs"], Scope(self.value_types)
                )
        if "outputs" in spec:
            out["outputs"] = self._outputs(
                spec["outputs"],
                path / "outputs",
                VALUE_NAME,
                what="a valid value name of the child flow",
            )
        return out
