"""What the handlers share: the runner, metrics, settings of one app."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent.errors import AgentError
from agent.flow.engine import AnswerRefused
from agent.flow.model import Flow
from agent.runtime.callbacks import CallbackIssuer
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.base import RunRecord, Store

from .metrics import Metrics
from .problems import Problem
from .webhooks import ReplayGuard

log = logging.getLogger("flow_agent.api")

MAX_JSON_DEPTH = 64
FIELD_CODES = frozenset({"missing_field", "invalid_field", "unknown_field"})
MOVED_ON_CODES = frozenset({"stale_token", "not_waiting"})

_INPUT_IN_MESSAGE = re.compile(r"^input '([^']*)'")


def _accepting() -> bool | str:
    return True


# Why new runs are refused, by the code ``accepting()`` gives.
_REFUSALS = {
    "draining": "the agent is stopping and starts no new runs; try again shortly",
    "outbox_full": "too many events wait for the control plane (outbox_limit); new runs"
    " start again once they are delivered",
}


@dataclass(kw_only=True)
class Context:
    runner: Runner
    metrics: Metrics
    token_source: Callable[[], str | None]
    ready: Callable[[], bool | str]
    secrets: Mapping[str, str]
    clock: Callable[[], float]
    callbacks: CallbackIssuer | None = None
    # True, or why new runs are refused now ("draining", "outbox_full"); the
    # rest of the API is served all the same.
    accepting: Callable[[], bool | str] = _accepting
    replay: ReplayGuard = field(default_factory=ReplayGuard)

    @property
    def token(self) -> str | None:
        """The API token now (a token file is read again when it changes)."""
        return self.token_source()

    def check_accepting(self) -> None:
        """503 while the agent takes no new runs (stopping, outbox full)."""
        answer = self.accepting()
        if answer is not True:
            code = answer if isinstance(answer, str) and answer in _REFUSALS else "draining"
            raise Problem(503, code, _REFUSALS[code], headers={"Retry-After": "10"})

    @property
    def store(self) -> Store:
        return self.runner.store

    @property
    def catalog(self) -> Catalog:
        return self.runner.catalog

    def active_flows(self) -> list[Flow]:
        """The flows a new run can start on, by id."""
        flows: list[Flow] = []
        for record in self.store.list_flows(active_only=True):
            try:
                engine = self.catalog.active(record.flow_id)
            except AgentError as exc:  # one broken stored flow must not hide the others
                log.warning("flow %s is not listed: %s", record.flow_id, exc.message)
                continue
            if engine is not None:
                flows.append(engine.flow)
        return sorted(flows, key=lambda f: f.id)

    def flow(self, flow_id: str) -> Flow | None:
        engine = self.catalog.active(flow_id)
        return engine.flow if engine is not None else None

    async def results(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        """Run results of listed runs; a run that cannot be loaded is shown as
        its stored status with the reason, instead of failing the listing."""
        out = []
        for record in records:
            try:
                out.append(await self.runner.result_of(record.run_id))
            except AgentError as exc:
                out.append(
                    {
                        "run_id": record.run_id,
                        "flow": record.flow_id,
                        "version": record.version,
                        "status": record.status,
                        "outputs": {},
                        "path": [],
                        "waiting": None,
                        "error": {"element": None, "message": exc.message},
                    }
                )
        return out


CONTEXT: web.AppKey[Context] = web.AppKey("flow_agent_context", Context)


def refused_field(exc: AnswerRefused) -> str | None:
    """The page field a refused answer is about, when it is about one."""
    return exc.field if exc.code in FIELD_CODES else None


def input_problems(problems: list[str]) -> list[dict[str, Any]]:
    """InputInvalid's messages as problem-details ``errors`` naming each input."""
    errors = []
    for text in problems:
        match = _INPUT_IN_MESSAGE.match(text)
        entry: dict[str, Any] = {"detail": text}
        if match:
            entry["input"] = match.group(1)
        errors.append(entry)
    return errors


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def parse_json(body: bytes) -> Any:
    """Decode a request body: 400 for anything that is not plain JSON."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Problem(400, "malformed_json", "the body's JSON is nested too deeply") from None
    if _too_deep(value):
        raise Problem(
            400, "malformed_json", f"the body's JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        )
    return value


def is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def read_json(request: web.Request) -> Any:
    """The JSON body, or None when there is none.  413, 415 and 400 as problems."""
    body = await request.read()
    if not body.strip():
        return None
    if not is_json_type(request.content_type):
        raise Problem(
            415,
            "unsupported_media_type",
            f"send the body as application/json (got {request.content_type or 'no type'})",
        )
    return parse_json(body)
