"""The flow/v1 grammar: top level, values, connectors, triggers.

Elements are parsed in ``parse_elements``, connector types' grammar lives in
``connector_types``; their public names are importable from here as well.
"""

from __future__ import annotations

import re
from typing import Any, Final

from . import values as V
from .connector_types import CONNECTOR_TYPES, ConnectorType, register_connector_type
from .cron import CronError, check_cron
from .model import (
    FORMAT,
    SLUG,
    VALUE_NAME,
    Connector,
    Flow,
    FlowInvalid,
    Issue,
    Trigger,
    ValueDef,
    flow_sha256,
)
from .parse_elements import (
    ARITHMETIC,
    COMMON,
    ELEMENT_FIELDS,
    LEAVES_BY_NEXT,
    LEAVES_BY_OUTCOMES,
    OPERATIONS,
    ElementParser,
)
from .schema import Checker, Path

CONNECTOR_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SECRET_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TOP_FIELDS: Final = (
    "format",
    "id",
    "name",
    "version",
    "values",
    "connectors",
    "triggers",
    "start",
    "elements",
)


def parse_flow(doc: object) -> Flow:
    checker = Checker()
    try:
        flow = FlowParser(checker).parse(doc)
    except RecursionError:
        checker.issues.append(Issue("(document)", "the document is nested too deeply"))
        flow = None
    if checker.issues or flow is None:
        raise FlowInvalid(checker.issues or [Issue("(document)", "not a valid flow")])
    return flow


class FlowParser(ElementParser):
    # -- top level -----------------------------------------------------------
    def parse(self, doc: object) -> Flow | None:
        root = Path()
        if not isinstance(doc, dict):
            self.c.error(root, f"a flow must be a JSON object, got {V.describe(doc)}")
            return None
        self.c.obj(doc, root, allowed=TOP_FIELDS, required=("format", "id", "start", "elements"))
        if "format" in doc and doc["format"] != FORMAT:
            self.c.error(root / "format", f"must be {FORMAT!r}, got {doc['format']!r}")
        flow_id = (
            self.c.string(doc["id"], root / "id", pattern=SLUG, what="flow id")
            if "id" in doc
            else None
        )
        name = doc.get("name")
        if "name" in doc:  # null too: optional fields are left out, never null
            self.c.string(name, root / "name")
        version = 0
        if "version" in doc:
            version = (
                self.c.integer(doc["version"], root / "version", minimum=1, maximum=2**53) or 0
            )
        values = self._values(doc.get("values", {}), root / "values")
        self._connectors(doc.get("connectors", {}), root / "connectors")
        raw_elements = doc.get("elements")
        if isinstance(raw_elements, dict):
            self.element_ids = {k for k in raw_elements if isinstance(k, str)}
        elements = self._elements(raw_elements, root / "elements") if "elements" in doc else {}
        start = doc.get("start")
        if "start" in doc and self.c.string(start, root / "start") is not None:
            self._target(start, root / "start")
        triggers = self._triggers(doc.get("triggers", []), root / "triggers")
        if self.c.issues or flow_id is None:
            return None
        return Flow(
            id=flow_id,
            version=version,
            name=name if isinstance(name, str) else None,
            start=str(start),
            values=values,
            connectors=self.connectors,
            elements=elements,
            triggers=triggers,
            definition=doc,
            sha256=flow_sha256(doc),
        )

    def _values(self, raw: Any, path: Path) -> dict[str, ValueDef]:
        out: dict[str, ValueDef] = {}
        if self.c.obj(raw, path, allowed=raw.keys() if isinstance(raw, dict) else ()) is None:
            return out
        for name, spec in raw.items():
            here = path / name
            if not VALUE_NAME.fullmatch(name):
                self.c.error(here, f"{name!r} is not a valid value name ({VALUE_NAME.pattern})")
                continue
            if name == "fault":
                self.c.error(here, "'fault' is reserved for the built-in fault value")
                continue
            body = self.c.obj(
                spec, here, allowed=("type", "access", "default", "secret"), required=("type",)
            )
            if body is None or "type" not in body:
                continue
            type_ = body["type"]
            if not isinstance(type_, str) or type_ not in V.TYPES:
                self.c.error(
                    here / "type", f"unknown type {type_!r} (one of: {', '.join(sorted(V.TYPES))})"
                )
                continue
            access = body.get("access", "private")
            if not isinstance(access, str) or access not in V.ACCESS:
                self.c.error(
                    here / "access",
                    f"unknown access {access!r} (one of: {', '.join(sorted(V.ACCESS))})",
                )
                continue
            secret = None
            default = None
            if type_ == "secret":
                if "secret" not in body:
                    self.c.error(
                        here, "a secret value needs 'secret': the name in the agent's secret store"
                    )
                else:
                    secret = self.c.string(
                        body["secret"], here / "secret", pattern=SECRET_NAME, what="secret name"
                    )
                if "default" in body:
                    self.c.error(here / "default", "a secret value cannot have a default")
                if access != "private":
                    self.c.error(here / "access", "a secret value is always private")
            else:
                if "secret" in body:
                    self.c.error(here / "secret", "only values of type 'secret' name a secret")
                if "default" in body:
                    try:
                        default = V.convert(type_, body["default"])
                    except V.ConversionError as exc:
                        self.c.error(here / "default", str(exc))
            self.value_types[name] = type_
            out[name] = ValueDef(name, type_, access, default, secret)
        return out

    def _connectors(self, raw: Any, path: Path) -> None:
        if self.c.obj(raw, path, allowed=raw.keys() if isinstance(raw, dict) else ()) is None:
            return
        for name, spec in raw.items():
            here = path / name
            if not CONNECTOR_NAME.fullmatch(name):
                self.c.error(here, f"{name!r} is not a valid connector name")
                continue
            if not isinstance(spec, dict) or "type" not in spec:
                # Without a type its other keys cannot be judged: one issue, not one per key.
                self.c.obj(spec, here, allowed=spec.keys() if isinstance(spec, dict) else ())
                if isinstance(spec, dict):
                    self.c.error(here, "missing required field 'type'")
                continue
            kind = CONNECTOR_TYPES.get(spec["type"]) if isinstance(spec["type"], str) else None
            if kind is None:
                self.c.error(
                    here / "type",
                    f"unknown connector type {spec['type']!r} (one of: "
                    f"{', '.join(sorted(CONNECTOR_TYPES))})",
                )
                continue
            self.c.obj(spec, here, allowed=kind.config, required=kind.required)
            headers: dict[str, Any] = {}
            if "headers" in spec:
                headers = self._headers(spec["headers"], here / "headers", secrets=True)
            if "base_url" in spec:
                url = self.c.string(spec["base_url"], here / "base_url")
                if url is not None and not re.match(r"https?://[^/\s]+", url):
                    self.c.error(here / "base_url", "must be an http:// or https:// URL")
            timeout = None
            if "timeout" in spec:
                timeout = self.c.number(
                    spec["timeout"], here / "timeout", minimum=0, maximum=3600, exclusive_min=True
                )
            config = {k: v for k, v in spec.items() if k not in ("headers", "type")}
            self.connectors[name] = Connector(name, spec["type"], config, headers, timeout)

    def _triggers(self, raw: Any, path: Path) -> tuple[Trigger, ...]:
        if not isinstance(raw, list):
            self.c.error(path, f"expected a list of triggers, got {V.describe(raw)}")
            return ()
        out: list[Trigger] = []
        for i, spec in enumerate(raw):
            here = path / i
            if isinstance(spec, dict) and "schedule" in spec:
                self.c.obj(spec, here, allowed=("schedule", "timezone"))
                cron = self.c.string(spec["schedule"], here / "schedule")
                if cron is not None:
                    try:
                        check_cron(cron)
                    except CronError as exc:
                        self.c.error(here / "schedule", str(exc))
                tz = spec.get("timezone")
                if "timezone" in spec:
                    self._timezone(tz, here / "timezone")
                out.append(Trigger(schedule=cron, timezone=tz if isinstance(tz, str) else None))
            elif isinstance(spec, dict) and "webhook" in spec:
                self.c.obj(spec, here, allowed=("webhook", "secret"))
                if spec["webhook"] is not True:
                    self.c.error(here / "webhook", "must be true")
                secret = None
                if "secret" in spec:
                    secret = self.c.string(
                        spec["secret"], here / "secret", pattern=SECRET_NAME, what="secret name"
                    )
                out.append(Trigger(webhook=True, secret=secret))
            else:
                self.c.error(here, 'a trigger is {"schedule": CRON} or {"webhook": true}')
        return tuple(out)

    def _timezone(self, name: Any, path: Path) -> bool:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", name):
            self.c.error(path, f"{name!r} is not a time zone name like 'Europe/Paris'")
            return False
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            self.c.error(path, f"unknown time zone {name!r}")
            return False
        return True


__all__ = [
    "ARITHMETIC",
    "COMMON",
    "CONNECTOR_NAME",
    "CONNECTOR_TYPES",
    "ELEMENT_FIELDS",
    "LEAVES_BY_NEXT",
    "LEAVES_BY_OUTCOMES",
    "OPERATIONS",
    "SECRET_NAME",
    "TOP_FIELDS",
    "ConnectorType",
    "ElementParser",
    "FlowParser",
    "parse_flow",
    "register_connector_type",
]
