"""The run state machine: feed it an event, get the new state and commands.

The engine does no I/O.  It walks pure elements (decision, operator, end) in
memory and stops where the outside world must act: a connector call, a child
run, a timer, a person.  The runner commits the returned state before it
executes any command, so a killed process resumes exactly where it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import values as V
from .commands import (
    Answer,
    CallConnector,
    Cancel,
    ChildFinished,
    Command,
    ConnectorDone,
    ConnectorRequest,
    Event,
    RetryPolicy,
    StartChild,
    TimerFired,
    WaitUntil,
)
from .evaluate import (
    RunFault,
    call,
    header_text,
    operate,
    redacted,
    render,
    response_part,
    rule,
    scrubbed,
    text,
    tree_names,
    until,
)
from .model import Element, Flow
from .state import RunState

DEFAULT_MAX_STEPS = 10_000
DEFAULT_TIMEOUT = 30.0


class InputInvalid(Exception):
    """Inputs that do not fit the flow: every problem, each naming the value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class AnswerRefused(Exception):
    """A resume that cannot be applied; the run is left as it was.

    ``code`` is one of: not_waiting, stale_token, unknown_outcome,
    unknown_field, missing_field, invalid_field.  ``field`` names the page
    field a refusal is about (the last three codes), so that a form can show
    the message beside it without parsing the message.
    """

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        self.code = code
        self.field = field
        super().__init__(message)


class EngineMisuse(Exception):
    """The caller fed an event the run is not waiting for (a bug or a replay)."""


@dataclass(frozen=True, slots=True)
class Visit:
    element: str
    visit: int
    type: str
    started: float
    ended: float


@dataclass(frozen=True, slots=True)
class Step:
    state: RunState
    commands: tuple[Command, ...]
    visits: tuple[Visit, ...]


def _zero() -> float:
    return 0.0


def state_token(run_id: str, visit: int) -> str:
    return hashlib.sha256(f"{run_id}:{visit}".encode()).hexdigest()[:24]


def idempotency_key(run_id: str, visit: int) -> str:
    return f"{run_id}:{visit}"


def convert_inputs(flow: Flow, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs converted to their declared types, or InputInvalid naming each."""
    problems: list[str] = []
    out: dict[str, Any] = {}
    accepted = {v.name for v in flow.inputs}
    for name, raw in inputs.items():
        spec = flow.values.get(name)
        if spec is None or name not in accepted:
            listed = ", ".join(sorted(accepted)) or "none"
            kind = "unknown value" if spec is None else "not an input value"
            problems.append(f"input '{name}': {kind} (inputs of flow '{flow.id}': {listed})")
            continue
        try:
            out[name] = V.convert(spec.type, raw)
        except V.ConversionError as exc:
            problems.append(f"input '{name}': {exc}")
    if problems:
        raise InputInvalid(problems)
    return out


class Engine:
    """Executes one flow version.  Cheap to keep: build once per version."""

    def __init__(
        self, flow: Flow, *, max_steps: int = DEFAULT_MAX_STEPS, clock: Callable[[], float] = _zero
    ) -> None:
        self.flow = flow
        self.max_steps = max_steps
        self.clock = clock
        self._output_names = tuple(
            v.name for v in flow.values.values() if v.access in V.OUTPUT_ACCESS
        )

    # -- entry points ----------------------------------------------------------
    def start(
        self,
        run_id: str,
        inputs: Mapping[str, Any],
        *,
        now: datetime,
        secrets: Mapping[str, str],
        parent: dict[str, Any] | None = None,
    ) -> Step:
        converted = convert_inputs(self.flow, inputs)
        values: dict[str, Any] = {"fault": None}
        for name, spec in self.flow.values.items():
            if spec.type != "secret":
                values[name] = V.normalize(spec.default)
        values.update(converted)
        state = RunState(
            run_id,
            self.flow.id,
            self.flow.version,
            values=values,
            current=self.flow.start,
            parent=parent,
        )
        return self._advance(state, now, secrets)

    def feed(
        self, state: RunState, event: Event, *, now: datetime, secrets: Mapping[str, str]
    ) -> Step:
        """Apply ``event`` to a copy of ``state``; the original is never changed."""
        if isinstance(event, Cancel):
            return self._cancel(state)
        # A person answering a page of a run that has since finished is no bug:
        # _answer refuses it (not_waiting) like any other answer that came late.
        if state.finished and not isinstance(event, Answer):
            raise EngineMisuse(f"run {state.run_id} has already {state.status}")
        if isinstance(event, Answer):
            new = self._answer(state, event)
        elif isinstance(event, ConnectorDone):
            new = self._connector_done(state, event, secrets)
        elif isinstance(event, ChildFinished):
            new = self._child_finished(state, event)
        elif isinstance(event, TimerFired):
            if not state.waiting or state.waiting.get("kind") != "timer":
                raise EngineMisuse(f"run {state.run_id} is not waiting on a timer")
            due = V.parse_datetime(state.waiting["until"])
            if now < due:
                return Step(state, (WaitUntil(until=due),), ())
            new = state.copy()
            new.status, new.waiting = "running", None
            new.current = self.flow.elements[state.current or ""].next
        else:  # pragma: no cover - the Event union is closed
            raise EngineMisuse(f"unknown event {event!r}")
        return self._advance(new, now, secrets)

    def pending_commands(
        self, state: RunState, *, now: datetime, secrets: Mapping[str, str]
    ) -> Step:
        """What to (re)do for a run loaded from the store, e.g. after a crash.

        A connector call is rebuilt with the same idempotency key; a child run
        is started again (the runner finds it if it exists); a running run
        just goes on.
        """
        if state.finished:
            return Step(state, (), ())
        if state.pending is not None:
            element = self.flow.elements[state.pending["element"]]
            visit = int(state.pending["visit"])
            new = state.copy()
            try:
                if state.pending["kind"] == "connector":
                    return Step(new, (self._connector_command(element, new, visit, secrets),), ())
                return Step(new, (self._child_command(element, new, visit),), ())
            except RunFault as fault:
                self._fail(new, element.id, str(fault))
                return Step(new, (), ())
        if state.status == "waiting" and state.waiting and state.waiting["kind"] == "timer":
            return self.feed(state, TimerFired(), now=now, secrets=secrets)
        if state.status == "running":
            return self._advance(state.copy(), now, secrets)
        return Step(state, (), ())

    def outputs(self, state: RunState) -> dict[str, Any]:
        """The output values in their in-run form (exact decimals, datetimes).

        What a parent run receives from a finished child: JSON's numbers
        would round 1/3 to a double on the way.
        """
        return {n: state.values.get(n) for n in self._output_names}

    def result(self, state: RunState) -> dict[str, Any]:
        """The run result of flow-format.md ("Run result")."""
        waiting = None
        if state.status == "waiting" and state.waiting:
            waiting = {k: v for k, v in state.waiting.items() if k not in ("visit",)}
        return {
            "run_id": state.run_id,
            "flow": state.flow_id,
            "version": state.version,
            "status": state.status,
            "outputs": {n: V.to_plain(state.values.get(n)) for n in self._output_names},
            "path": list(state.path),
            "waiting": V.to_plain(waiting),
            "error": state.error,
        }

    # -- the walk ----------------------------------------------------------------
    def _advance(self, state: RunState, now: datetime, secrets: Mapping[str, str]) -> Step:
        commands: list[Command] = []
        visits: list[Visit] = []
        elements = self.flow.elements
        while state.status == "running" and state.pending is None and state.current:
            element = elements[state.current]
            if len(state.path) >= self.max_steps:
                self._fail(
                    state,
                    element.id,
                    f"the run visited more than {self.max_steps} "
                    "elements (max_steps); does a loop never exit?",
                )
                break
            state.path.append(element.id)
            visit = len(state.path)
            started = self.clock()
            try:
                state.current = self._execute(element, state, visit, now, secrets, commands)
            except RunFault as fault:
                self._fail(state, element.id, str(fault))
            visits.append(Visit(element.id, visit, element.type, started, self.clock()))
        return Step(state, tuple(commands), tuple(visits))

    def _execute(
        self,
        element: Element,
        state: RunState,
        visit: int,
        now: datetime,
        secrets: Mapping[str, str],
        commands: list[Command],
    ) -> str | None:
        kind = element.type
        if kind == "decision":
            for outcome in element.outcomes:
                if outcome.when is None or rule(outcome.when, state.values):
                    return outcome.next
            raise RunFault(f"no outcome of decision '{element.id}' applies")
        if kind == "operator":
            for op in element.operations:
                operate(self.flow, op, state.values)
            return element.next
        if kind == "end":
            if element.status == "failed":
                message = (
                    text(element.message, state.values)
                    if element.message
                    else "the flow ended as failed"
                )
                state.status = "failed"
                state.error = {"element": element.id, "message": message}
            else:
                state.status = "completed"
            return element.id
        if kind == "message":
            state.pending = {
                "kind": "connector",
                "element": element.id,
                "visit": visit,
                "key": idempotency_key(state.run_id, visit),
            }
            commands.append(self._connector_command(element, state, visit, secrets))
            return element.id
        if kind in ("page", "step"):
            self._wait_for_person(element, state, visit)
            return element.id
        if kind == "wait":
            due = until(element, state.values, now)
            if due <= now:
                return element.next
            state.status = "waiting"
            state.waiting = self._waiting(element, state, visit, "timer", until=due.isoformat())
            commands.append(WaitUntil(until=due))
            return element.id
        if kind == "subflow":
            state.pending = {
                "kind": "subflow",
                "element": element.id,
                "visit": visit,
                "child": f"{state.run_id}.{visit}",
            }
            commands.append(self._child_command(element, state, visit))
            state.status = "waiting"
            state.waiting = self._waiting(
                element, state, visit, "subflow", child=state.pending["child"]
            )
            return element.id
        raise RunFault(f"unknown element type {kind!r}")  # pragma: no cover

    # -- people ------------------------------------------------------------------
    def _waiting(
        self, element: Element, state: RunState, visit: int, kind: str, **extra: Any
    ) -> dict[str, Any]:
        return {
            "element": element.id,
            "kind": kind,
            "state_token": state_token(state.run_id, visit),
            "outcomes": [],
            "fields": [],
            "until": None,
            "visit": visit,
            **extra,
        }

    def _wait_for_person(self, element: Element, state: RunState, visit: int) -> None:
        fields = []
        for f in element.fields:
            spec = self.flow.values[f.value]
            fields.append(
                {
                    "value": f.value,
                    "label": f.label,
                    "required": f.required,
                    "type": spec.type,
                    "current": state.values.get(f.value),
                }
            )
        waiting = self._waiting(
            element,
            state,
            visit,
            "input",
            fields=fields,
            outcomes=[{"id": o.id, "label": o.label or o.id} for o in element.outcomes],
        )
        if element.title is not None:
            waiting["title"] = text(element.title, state.values)
        if element.content is not None:
            waiting["content"] = text(element.content, state.values)
        state.status = "waiting"
        state.waiting = waiting

    def _answer(self, state: RunState, answer: Answer) -> RunState:
        waiting = state.waiting
        if state.status != "waiting" or not waiting or waiting.get("kind") != "input":
            kind = waiting.get("kind") if waiting else None
            raise AnswerRefused(
                "not_waiting",
                f"run {state.run_id} is {state.status}"
                + (f" (waiting on a {kind})" if kind else "")
                + ", not waiting for a person",
            )
        if answer.state_token is not None and answer.state_token != waiting["state_token"]:
            raise AnswerRefused(
                "stale_token",
                "this run has moved on since that page was shown "
                "(stale state token); reload it and try again",
            )
        element = self.flow.elements[waiting["element"]]
        outcome = next((o for o in element.outcomes if o.id == answer.outcome), None)
        if outcome is None:
            ids = ", ".join(str(o.id) for o in element.outcomes)
            raise AnswerRefused(
                "unknown_outcome",
                f"'{answer.outcome}' is not an outcome of '{element.id}' (choose one of: {ids})",
            )
        declared = {f.value: f for f in element.fields}
        converted: dict[str, Any] = {}
        for name, raw in answer.fields.items():
            if name not in declared:
                raise AnswerRefused(
                    "unknown_field", f"'{name}' is not a field of '{element.id}'", field=name
                )
            try:
                converted[name] = V.convert(self.flow.values[name].type, raw)
            except V.ConversionError as exc:
                raise AnswerRefused("invalid_field", f"field '{name}': {exc}", field=name) from None
        for f in element.fields:
            value = converted.get(f.value, state.values.get(f.value))
            if f.required and V.is_empty(value):
                raise AnswerRefused(
                    "missing_field", f"field '{f.value}' ({f.label}) is required", field=f.value
                )
        new = state.copy()
        new.values.update(converted)
        new.status, new.waiting, new.current = "running", None, outcome.next
        return new

    # -- connectors and children -------------------------------------------------------
    def _connector_command(
        self, element: Element, state: RunState, visit: int, secrets: Mapping[str, str]
    ) -> CallConnector:
        connector = self.flow.connectors[element.connector or ""]
        scope = state.values
        secret_scope, redact = self._secret_scope(connector.headers, secrets)
        try:
            rendered = render(connector.headers, {**scope, **secret_scope})
        except RunFault as fault:
            # Jinja's messages can quote an operand ("'<token>' is not in list").
            raise RunFault(redacted(str(fault), redact)) from None
        headers = {k: header_text(v) for k, v in rendered.items()}
        if element.headers:
            headers.update({k: header_text(v) for k, v in render(element.headers, scope).items()})
        action = element.action or ""
        if element.action_path is not None:
            method = action.split(" ", 1)[0]
            path = str(call(element.action_path, scope))
            segments = path.split("?", 1)[0].split("/")
            if any(seg in ("..", ".") or "\\" in seg for seg in segments):
                raise RunFault(
                    f"the rendered path {path!r} climbs out of the connector's "
                    "base URL ('..' segments are not allowed)"
                )
            action = f"{method} {path}"
        query = None
        if element.query is not None:
            query = {k: header_text(v) for k, v in render(element.query, scope).items()}
        return CallConnector(
            request=ConnectorRequest(
                run_id=state.run_id,
                element=element.id,
                connector=connector.name,
                connector_type=connector.type,
                config=connector.config,
                action=action,
                body=V.to_plain(render(element.body, scope)) if element.body is not None else None,
                query=query,
                headers=headers,
                inputs=V.to_plain(render(element.inputs, scope))
                if element.inputs is not None
                else None,
                timeout=float(element.timeout or connector.timeout or DEFAULT_TIMEOUT),
                retry=RetryPolicy(attempts=element.retry_attempts, backoff=element.retry_backoff),
                idempotency_key=idempotency_key(state.run_id, visit),
                redact=redact,
                visit=visit,
            )
        )

    def _secret_scope(
        self, tree: Any, secrets: Mapping[str, str]
    ) -> tuple[dict[str, str], tuple[str, ...]]:
        names = tree_names(tree)
        scope: dict[str, str] = {}
        for name in names:
            spec = self.flow.values.get(name)
            if spec is None or spec.type != "secret" or spec.secret is None:
                continue
            secret = secrets.get(spec.secret)
            if secret is None:
                raise RunFault(
                    f"secret '{spec.secret}' (value '{name}') is not in the agent's secret store"
                )
            scope[name] = secret
        return scope, tuple(v for v in scope.values() if v)

    def _sent_secrets(self, tree: Any, secrets: Mapping[str, str]) -> tuple[str, ...]:
        """The secret values a call rendered from ``tree`` carried (a missing one is skipped)."""
        found = []
        for name in tree_names(tree):
            spec = self.flow.values.get(name)
            if spec is not None and spec.type == "secret" and spec.secret is not None:
                value = secrets.get(spec.secret)
                if value:
                    found.append(value)
        return tuple(found)

    def _connector_done(
        self, state: RunState, event: ConnectorDone, secrets: Mapping[str, str]
    ) -> RunState:
        pending = state.pending
        if not pending or pending["kind"] != "connector" or pending["visit"] != event.visit:
            raise EngineMisuse(
                f"run {state.run_id} is not waiting for connector visit {event.visit}"
            )
        new = state.copy()
        # A callback answer arrives while the run is waiting on it.
        new.pending, new.status, new.waiting = None, "running", None
        element = self.flow.elements[pending["element"]]
        result = event.result
        if result.wait:
            new.status = "waiting"
            new.pending = dict(pending)
            new.waiting = self._waiting(element, new, event.visit, "callback")
            return new
        connector = self.flow.connectors[element.connector or ""]
        if not result.ok:
            # Connectors redact their messages; a plugin that forgets must not
            # put a secret into the run's values, its error or its reports.
            message = redacted(result.message, self._sent_secrets(connector.headers, secrets))
            return self._take_fault(
                new, element, message, status=result.status, connector=element.connector
            )
        sent = self._sent_secrets(connector.headers, secrets) if element.outputs else ()
        try:
            for name, source in element.outputs.items():
                raw = (
                    response_part(result, source)
                    if connector.type == "http"
                    else ((result.outputs or {}).get(source))
                )
                new.values[name] = self._convert(element, name, scrubbed(raw, sent))
        except RunFault as fault:
            self._fail(new, element.id, str(fault))
            return new
        new.current = element.next
        return new

    def _child_command(self, element: Element, state: RunState, visit: int) -> StartChild:
        inputs = render(element.inputs, state.values) if element.inputs is not None else {}
        return StartChild(
            element=element.id,
            visit=visit,
            child_run_id=f"{state.run_id}.{visit}",
            flow_id=element.flow or "",
            inputs=inputs,
        )

    def _child_finished(self, state: RunState, event: ChildFinished) -> RunState:
        pending = state.pending
        if not pending or pending["kind"] != "subflow" or pending["visit"] != event.visit:
            raise EngineMisuse(
                f"run {state.run_id} is not waiting for a child at visit {event.visit}"
            )
        new = state.copy()
        new.pending, new.waiting, new.status = None, None, "running"
        element = self.flow.elements[pending["element"]]
        if event.status != "completed":
            why = event.error or event.status
            return self._take_fault(new, element, f"subflow '{element.flow}' {event.status}: {why}")
        try:
            for name, child_name in element.outputs.items():
                if child_name not in event.outputs:
                    # A completed child reports every output value it has: a name
                    # it lacks is a mistake of the flows, not a quiet null.
                    listed = ", ".join(sorted(event.outputs)) or "none"
                    raise RunFault(
                        f"'{element.id}' cannot set value '{name}': flow '{element.flow}' has "
                        f"no output value '{child_name}' (its outputs: {listed})"
                    )
                new.values[name] = self._convert(element, name, event.outputs[child_name])
        except RunFault as fault:
            self._fail(new, element.id, str(fault))
            return new
        new.current = element.next
        return new

    def _take_fault(
        self,
        state: RunState,
        element: Element,
        message: str,
        *,
        status: int | None = None,
        connector: str | None = None,
    ) -> RunState:
        state.status, state.waiting = "running", None
        state.values["fault"] = {
            "element": element.id,
            "connector": connector,
            "status": status,
            "message": message,
        }
        if element.fault:
            state.current = element.fault
        else:
            self._fail(state, element.id, message)
        return state

    def _cancel(self, state: RunState) -> Step:
        if state.finished:
            return Step(state, (), ())
        new = state.copy()
        new.status, new.waiting, new.pending = "cancelled", None, None
        return Step(new, (), ())

    def _fail(self, state: RunState, element: str, message: str) -> None:
        state.status = "failed"
        state.error = {"element": element, "message": message}
        state.waiting = None
        state.pending = None

    # -- values ---------------------------------------------------------------------
    def _convert(self, element: Element, name: str, raw: Any) -> Any:
        try:
            return V.convert(self.flow.values[name].type, raw)
        except V.ConversionError as exc:
            raise RunFault(f"'{element.id}' cannot set value '{name}': {exc}") from None
