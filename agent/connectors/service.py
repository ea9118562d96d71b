"""The ``service`` connector: a remote connector service over HTTPS JSON.

In the style of Flow's connector model (docs/connectors.md has the contract):

* ``POST {url}/metadata`` describes the service's actions, their inputs and
  outputs.  It is fetched on first use and cached per URL and headers for
  ``metadata_ttl`` seconds; an action missing from a cached copy triggers one
  fresh fetch before the call faults, so a service can add actions without
  restarting the agent.
* ``POST {url}/actions/{name}`` with ``{"run_id", "element",
  "idempotency_key", "inputs", "callback"}`` answers
  ``{"status": "done", "outputs": {...}}`` (the run goes on),
  ``{"status": "wait"}`` (the run waits, kind ``callback``, until the service
  posts the outputs to ``callback.url`` with ``callback.token``), or
  ``{"status": "error", "message": "..."}`` (the element's fault).

Every request goes through an ``HttpConnector`` of its own, and so through
the same network guard, redirect checks, size limit, retry policy and
redaction as the ``http`` type: this module only speaks the protocol.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from yarl import URL

from agent.connectors.base import ConnectorRequest, ConnectorResult, RetryPolicy
from agent.connectors.guard import NetworkGuard
from agent.connectors.http import DEFAULT_MAX_RESPONSE_BYTES, HttpConnector, SessionFactory, Sleep
from agent.connectors.http_wire import Redactor

ACTION_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEFAULT_METADATA_TTL: Final = 300.0
_MESSAGE_LIMIT: Final = 500


class Callbacks(Protocol):
    """Where a waiting service answers (``agent.runtime.callbacks.CallbackIssuer``)."""

    def callback(self, run_id: str, visit: int) -> dict[str, str] | None: ...


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    inputs: Mapping[str, bool] | None  # input name -> required; None: not declared
    outputs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceMetadata:
    actions: Mapping[str, ActionSpec]
    fetched_at: float


class _Fault(Exception):
    """Ends a call as a fault; the message is for a person."""


def parse_metadata(doc: Any, *, fetched_at: float = 0.0) -> ServiceMetadata:
    """Read a ``/metadata`` answer; ``ValueError`` says what is wrong with it."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("actions"), list):
        raise ValueError('expected an object with "actions": a list of actions')
    actions: dict[str, ActionSpec] = {}
    for i, raw in enumerate(doc["actions"]):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise ValueError(f"actions[{i}] is not an object with a name")
        name = raw["name"]
        inputs: dict[str, bool] | None = None
        if "inputs" in raw:
            inputs = {}
            for j, item in enumerate(_list(raw["inputs"], f"actions[{i}].inputs")):
                if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                    raise ValueError(f"actions[{i}].inputs[{j}] is not an object with a name")
                inputs[item["name"]] = item.get("required") is True
        outputs: list[str] = []
        for j, item in enumerate(_list(raw.get("outputs", []), f"actions[{i}].outputs")):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise ValueError(f"actions[{i}].outputs[{j}] is not an object with a name")
            outputs.append(item["name"])
        actions[name] = ActionSpec(name, inputs, tuple(outputs))
    return ServiceMetadata(actions, fetched_at)


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where} is not a list")
    return value


class ServiceConnector:
    """Executes ``service`` connector requests.  One instance serves every call."""

    def __init__(
        self,
        *,
        guard: NetworkGuard,
        callbacks: Callbacks | None = None,
        metadata_ttl: float = DEFAULT_METADATA_TTL,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        session_factory: SessionFactory | None = None,
        http: HttpConnector | None = None,
    ) -> None:
        self._http = http or HttpConnector(
            guard=guard,
            max_response_bytes=max_response_bytes,
            session_factory=session_factory,
            sleep=sleep,
        )
        self._callbacks = callbacks
        self._ttl = metadata_ttl
        self._clock = clock
        self._cache: dict[str, ServiceMetadata] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        self._cache.clear()
        await self._http.close()

    async def call(self, request: ConnectorRequest) -> ConnectorResult:
        redact = Redactor(request.redact)
        try:
            return await self._call(request, redact)
        except _Fault as fault:
            return ConnectorResult(ok=False, message=redact(str(fault)))

    async def _call(self, request: ConnectorRequest, redact: Redactor) -> ConnectorResult:
        url = _service_url(request)
        name = request.action.strip()
        if not ACTION_NAME.fullmatch(name):
            raise _Fault(f"{name!r} is not a service action name (letters, digits, '.', '_', '-')")
        inputs = request.inputs if request.inputs is not None else {}
        if not isinstance(inputs, Mapping):
            raise _Fault("the inputs of a service action must be an object")
        spec = await self._action(request, url, name)
        _check_inputs(spec, inputs, url)
        callback = None
        if self._callbacks is not None:
            callback = self._callbacks.callback(request.run_id, request.visit)
        body = {
            "run_id": request.run_id,
            "element": request.element,
            "idempotency_key": request.idempotency_key,
            "inputs": dict(inputs),
            "callback": callback,
        }
        answer = await self._http.call(
            _http_request(
                request,
                url,
                f"POST /actions/{name}",
                body,
                retry=request.retry,
                idempotency_key=request.idempotency_key,
            )
        )
        if not answer.ok:
            raise _Fault(answer.message + _peer_message(answer.body))
        return _result(answer, url=url, name=name, can_wait=callback is not None)

    async def _action(self, request: ConnectorRequest, url: str, name: str) -> ActionSpec:
        key = _cache_key(url, request.headers)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            fresh = cached is not None and self._clock() - cached.fetched_at < self._ttl
            if cached is None or not fresh or name not in cached.actions:
                # A missing action may be new: look again before faulting.
                cached = await self._fetch_metadata(request, url)
                self._cache[key] = cached
        spec = cached.actions.get(name)
        if spec is None:
            known = ", ".join(sorted(cached.actions)) or "none"
            raise _Fault(f"the service at {url} has no action {name!r} (its actions: {known})")
        return spec

    async def _fetch_metadata(self, request: ConnectorRequest, url: str) -> ServiceMetadata:
        answer = await self._http.call(
            # Metadata is safe to ask again: retry it like a GET.  No
            # Idempotency-Key: a service keying answers on it must not hand
            # the metadata back for the action call that follows.
            _http_request(
                request,
                url,
                "POST /metadata",
                {},
                retry=RetryPolicy(attempts=2),
                idempotency_key="",
            )
        )
        if not answer.ok:
            raise _Fault(
                f"cannot read the service's metadata: {answer.message}" + _peer_message(answer.body)
            )
        try:
            return parse_metadata(answer.body, fetched_at=self._clock())
        except ValueError as exc:
            raise _Fault(f"the metadata of the service at {url} is malformed: {exc}") from None


def _service_url(request: ConnectorRequest) -> str:
    raw = request.config.get("url")
    try:
        url = URL(raw) if isinstance(raw, str) else None
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.raw_host:
        raise _Fault(f"connector {request.connector}: url must be an http:// or https:// URL")
    if url.query_string or url.fragment:
        raise _Fault(f"connector {request.connector}: url must have no query or fragment")
    return str(url).rstrip("/")


def _cache_key(url: str, headers: Mapping[str, str]) -> str:
    # Headers (credentials) may change what a service shows; keep only a digest.
    canonical = json.dumps(sorted((k.lower(), v) for k, v in headers.items()))
    return url + " " + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _http_request(
    request: ConnectorRequest,
    url: str,
    action: str,
    body: Any,
    *,
    retry: RetryPolicy,
    idempotency_key: str,
) -> ConnectorRequest:
    return ConnectorRequest(
        run_id=request.run_id,
        element=request.element,
        connector=request.connector,
        connector_type="http",
        config={"base_url": url},
        action=action,
        body=body,
        headers=request.headers,
        timeout=request.timeout,
        retry=retry,
        idempotency_key=idempotency_key,
        redact=request.redact,
        visit=request.visit,
    )


def _check_inputs(spec: ActionSpec, inputs: Mapping[str, Any], url: str) -> None:
    if spec.inputs is None:
        return
    missing = [n for n, required in spec.inputs.items() if required and inputs.get(n) is None]
    if missing:
        raise _Fault(f"action {spec.name!r} needs the input(s) {', '.join(sorted(missing))}")
    unknown = sorted(set(inputs) - set(spec.inputs))
    if unknown:
        declared = ", ".join(sorted(spec.inputs)) or "none"
        raise _Fault(
            f"action {spec.name!r} of the service at {url} takes no input(s) "
            f"{', '.join(unknown)} (its inputs: {declared})"
        )


def _peer_message(body: Any) -> str:
    """The service's own explanation, when its error body carries one."""
    if isinstance(body, Mapping) and isinstance(body.get("message"), str) and body["message"]:
        return f": {body['message'][:_MESSAGE_LIMIT]}"
    return ""


def _result(answer: ConnectorResult, *, url: str, name: str, can_wait: bool) -> ConnectorResult:
    body = answer.body
    status = body.get("status") if isinstance(body, Mapping) else None
    where = f"action {name!r} of the service at {url}"
    if status == "done":
        outputs = body.get("outputs", {})
        if outputs is None:
            outputs = {}
        if not isinstance(outputs, Mapping):
            raise _Fault(f"{where} answered done with outputs that are not an object")
        return ConnectorResult(
            ok=True,
            status=answer.status,
            body=body,
            outputs=dict(outputs),
            attempts=answer.attempts,
        )
    if status == "wait":
        if not can_wait:
            raise _Fault(
                f"{where} asked to answer later, but this agent has no callback URL "
                "(run the agent with its local API for services that wait)"
            )
        return ConnectorResult(ok=True, status=answer.status, wait=True, attempts=answer.attempts)
    if status == "error":
        raise _Fault(f"{where} failed" + (_peer_message(body) or ": no message"))
    raise _Fault(
        f"{where} answered neither done, wait nor error "
        '(expected {"status": "done", "outputs": {...}})'
    )
