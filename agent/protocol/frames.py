"""Wire messages of protocol v1 and the frame codec.

One frozen dataclass per message ``type`` of docs/protocol.md, built with
keywords.  :func:`encode` turns a message into one JSON text frame;
:func:`decode` turns a frame from the peer into a message or raises a
:class:`~agent.protocol.errors.RemoteProtocolError` subclass, and nothing
else, whatever the input.

Limits are checked before ``json.loads`` sees the text: the size in UTF-8
bytes, then the nesting depth by a bracket scan that cannot recurse, so a
hostile frame costs at most one linear pass.

Free-form JSON (a flow ``definition``, run ``inputs``, event ``data``,
``facts``) stays a plain ``dict``; treat it as read-only.
"""

from __future__ import annotations

import json
import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Final, Union, get_args, get_origin, get_type_hints

from agent.protocol.errors import (
    FrameTooDeep,
    FrameTooLarge,
    InvalidFields,
    LocalProtocolError,
    MalformedFrame,
    ProtocolError,
    RemoteProtocolError,
    UnknownType,
    UnsupportedVersion,
)

PROTOCOL_VERSION: Final = 1
MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
MAX_DEPTH: Final = 64

JSONObject = dict[str, Any]

EVENT_KINDS: Final = frozenset(
    {
        "run.started",
        "element.entered",
        "element.left",
        "run.waiting",
        "run.completed",
        "run.failed",
        "run.cancelled",
        "flow.rejected",
    }
)
# Kinds after which a run no longer changes by itself (waiting needs a person or a timer).
RUN_END_KINDS: Final = frozenset({"run.completed", "run.failed", "run.cancelled"})
# The agent's secret names (agent.flow.parse.SECRET_NAME), checked before anything is opened.
_SECRET_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# A check of one field's value beyond its type: (holds, what a failure says after the name).
_Rule = tuple[Callable[[Any], object], str]
_POSITIVE: Final[_Rule] = (lambda value: value > 0, "must be positive")
_AT_LEAST_ONE: Final[_Rule] = (lambda value: value >= 1, "must be >= 1")
_NOT_NEGATIVE: Final[_Rule] = (lambda value: value >= 0, "must be >= 0")
_VALID_SECRET_NAME: Final[_Rule] = (_SECRET_NAME.fullmatch, "is not a valid secret name")
# Field metadata of a field added after v1 shipped: left off the wire while None,
# because a peer that predates it refuses a frame with a field it does not know.
_OMIT_KEY: Final = "omitted_when_none"
OMITTED_WHEN_NONE: Final[Mapping[str, bool]] = types.MappingProxyType({_OMIT_KEY: True})


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every wire message; ``TYPE`` is the frame's ``type``.

    ``RULES`` maps a field to the rule its value must meet once its type is
    right; rules spanning several values override :meth:`problems`.
    """

    TYPE: ClassVar[str] = ""
    RULES: ClassVar[Mapping[str, _Rule]] = {}

    def problems(self) -> list[str]:
        """Rules beyond field types (ranges, ordering); empty when valid."""
        return [
            f"{name} {says}"
            for name, (holds, says) in self.RULES.items()
            if not holds(getattr(self, name))
        ]


# -- nested items -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FlowRef:
    """One flow an agent holds: ``sha256`` as given by :func:`signing.flow_sha256`."""

    id: str
    version: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Event:
    """One outbox event; ``at`` is ISO 8601 with offset, ``seq`` is per agent from 1."""

    seq: int
    kind: str
    at: str
    data: JSONObject
    run_id: str | None = None


# -- handshake ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    RULES: ClassVar[Mapping[str, _Rule]] = {"heartbeat": _POSITIVE}
    nonce: str
    server_time: str
    region: str
    heartbeat: float


@dataclass(frozen=True, kw_only=True)
class Auth(Message):
    TYPE: ClassVar[str] = "auth"
    agent_id: str
    signature: str
    agent_version: str
    facts: JSONObject


@dataclass(frozen=True, kw_only=True)
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    RULES: ClassVar[Mapping[str, _Rule]] = {"heartbeat": _POSITIVE, "last_seq": _NOT_NEGATIVE}
    session_id: str
    tenant: str
    heartbeat: float
    last_seq: int


# -- ready --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Inventory(Message):
    TYPE: ClassVar[str] = "inventory"
    flows: tuple[FlowRef, ...]


@dataclass(frozen=True, kw_only=True)
class FlowPush(Message):
    """Frame type ``flow``: a published flow version, signed by the control plane."""

    TYPE: ClassVar[str] = "flow"
    RULES: ClassVar[Mapping[str, _Rule]] = {"version": _AT_LEAST_ONE}
    tenant: str
    id: str
    version: int
    definition: JSONObject
    sha256: str
    signature: str
    activate: bool


@dataclass(frozen=True, kw_only=True)
class Activate(Message):
    TYPE: ClassVar[str] = "activate"
    RULES: ClassVar[Mapping[str, _Rule]] = {"version": _AT_LEAST_ONE, "serial": _AT_LEAST_ONE}
    tenant: str
    id: str
    version: int
    serial: int
    signature: str


@dataclass(frozen=True, kw_only=True)
class FlowAck(Message):
    TYPE: ClassVar[str] = "flow_ack"
    id: str
    version: int
    ok: bool
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class StartRun(Message):
    """``version`` ``None`` means the agent's active version of ``flow``."""

    TYPE: ClassVar[str] = "start_run"
    run_id: str
    flow: str
    inputs: JSONObject
    version: int | None = None


@dataclass(frozen=True, kw_only=True)
class RunAck(Message):
    """``reason`` when refused: flow_unknown, inputs_invalid, outbox_full, draining.

    ``message`` says why for a person (input names, never input values); it
    is added to the wire only when set, so an ack without one is what peers
    older than the field expect.
    """

    TYPE: ClassVar[str] = "run_ack"
    run_id: str
    accepted: bool
    reason: str | None = None
    message: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)


@dataclass(frozen=True, kw_only=True)
class CancelRun(Message):
    TYPE: ClassVar[str] = "cancel_run"
    run_id: str


@dataclass(frozen=True, kw_only=True)
class Events(Message):
    TYPE: ClassVar[str] = "events"
    events: tuple[Event, ...]

    def problems(self) -> list[str]:
        out: list[str] = []
        previous = 0
        for index, event in enumerate(self.events):
            if event.seq <= previous:
                out.append(f"events[{index}].seq must be >= 1 and ascending")
            previous = event.seq
        return out


@dataclass(frozen=True, kw_only=True)
class Ack(Message):
    TYPE: ClassVar[str] = "ack"
    RULES: ClassVar[Mapping[str, _Rule]] = {"seq": _NOT_NEGATIVE}
    seq: int


@dataclass(frozen=True, kw_only=True)
class Status(Message):
    """``host``: facts such as hostname/os/arch; ``runs``: count per run status."""

    TYPE: ClassVar[str] = "status"
    RULES: ClassVar[Mapping[str, _Rule]] = {"outbox_depth": _NOT_NEGATIVE}
    agent_version: str
    host: JSONObject
    flows: tuple[FlowRef, ...]
    runs: dict[str, int]
    outbox_depth: int


@dataclass(frozen=True, kw_only=True)
class SealedSecret:
    """``agent.protocol.sealing.seal``'s output: base64url ``epk``, ``nonce``, ``ct``."""

    v: int
    alg: str
    epk: str
    nonce: str
    ct: str


@dataclass(frozen=True, kw_only=True)
class SecretPush(Message):
    """Frame type ``secret``: one secret sealed to the receiving agent.

    ``name`` is in clear so the acknowledgement can name it; the sealed body
    carries it too, and the agent refuses the frame when the two differ.
    """

    TYPE: ClassVar[str] = "secret"
    RULES: ClassVar[Mapping[str, _Rule]] = {"name": _VALID_SECRET_NAME}
    name: str
    sealed: SealedSecret


@dataclass(frozen=True, kw_only=True)
class SecretAck(Message):
    """``reason`` when refused: no_sealing_key, sealed_invalid, store_failed."""

    TYPE: ClassVar[str] = "secret_ack"
    name: str
    ok: bool
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class ErrorFrame(Message):
    """Frame type ``error``: the peer's frame was refused."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


MESSAGE_TYPES: Final[dict[str, type[Message]]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Auth,
        Welcome,
        Inventory,
        FlowPush,
        Activate,
        FlowAck,
        StartRun,
        RunAck,
        CancelRun,
        Events,
        Ack,
        Status,
        SecretPush,
        SecretAck,
        ErrorFrame,
    )
}


def error_frame(exc: RemoteProtocolError) -> ErrorFrame:
    """The ``error`` frame that answers a refused frame."""
    return ErrorFrame(code=exc.code, message=exc.message)


# -- codec --------------------------------------------------------------------


def encode(msg: Message, *, max_bytes: int = MAX_FRAME_BYTES) -> str:
    """One JSON text frame for ``msg``; raises LocalProtocolError if it is invalid."""
    cls = type(msg)
    if MESSAGE_TYPES.get(cls.TYPE) is not cls:
        raise LocalProtocolError(f"{cls.__name__} is not a protocol message")
    body = _to_json(msg)
    assert isinstance(body, dict)
    try:
        checked = _build(cls, body, "")
    except _Bad as bad:
        raise LocalProtocolError(f"cannot encode {cls.TYPE!r}: {bad}") from None
    _raise_problems(checked, LocalProtocolError)
    try:
        text = json.dumps(
            {"v": PROTOCOL_VERSION, "type": cls.TYPE, **body},
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
        )
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode {cls.TYPE!r}: {exc}") from exc
    if size > max_bytes:
        raise LocalProtocolError(f"{cls.TYPE!r} frame is {size} bytes, over the {max_bytes} limit")
    return text


def decode(
    text: str | bytes, *, max_bytes: int = MAX_FRAME_BYTES, max_depth: int = MAX_DEPTH
) -> Message:
    """Parse one frame from the peer; raises only RemoteProtocolError subclasses."""
    if not isinstance(text, str):
        raise MalformedFrame("frame is not text; frames are JSON text objects")
    if len(text) > max_bytes:
        raise FrameTooLarge(f"frame is over the {max_bytes}-byte limit")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise MalformedFrame("frame is not valid UTF-8 text") from None
    if size > max_bytes:
        raise FrameTooLarge(f"frame is {size} bytes, over the {max_bytes}-byte limit")
    if nesting_depth(text, stop_above=max_depth) > max_depth:
        raise FrameTooDeep(f"frame nests deeper than {max_depth} levels")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        if _SURROGATE_ESCAPE.search(text):
            # An escaped lone surrogate decodes into a str that cannot be stored or re-encoded.
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except _Bad as bad:
        raise MalformedFrame(f"frame is not valid JSON: {bad}") from None
    except (ValueError, RecursionError) as exc:
        raise MalformedFrame(f"frame is not valid JSON: {_short(exc)}") from None
    if not isinstance(doc, dict):
        raise MalformedFrame("frame is not a JSON object")
    version = doc.pop("v", None)
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"frame version {_short(version)} is not supported;"
            f" this side speaks v{PROTOCOL_VERSION}"
        )
    kind = doc.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise UnknownType(f"unknown frame type {_short(kind)}")
    try:
        msg: Message = _build(cls, doc, "")
    except _Bad as bad:
        raise InvalidFields(f"{kind!r} frame: {bad}") from None
    _raise_problems(msg, InvalidFields)
    return msg


_NOT_MARK: Final = bytes(b for b in range(256) if b not in b'"[]{}')
_QUOTE: Final = ord('"')
_STEP: Final = tuple(1 if b in b"[{" else -1 for b in range(256))
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def nesting_depth(text: str, *, stop_above: int | None = None) -> int:
    """Deepest bracket nesting outside JSON strings, found without recursion.

    With ``stop_above``, reading stops as soon as the depth passes it (the
    result is then only known to be larger).

    Unterminated strings only make the result larger, never smaller, so a
    malformed frame cannot sneak depth past the check.  Memory stays within
    a few times the frame's size, whatever the frame: regular expressions
    grew the engine's stack with every escape inside a string (a 4 MiB frame
    of ``\\u0041``s took 76 MiB to scan) and re.sub's list of pieces with
    every string, so escapes and everything but quotes and brackets are
    dropped first, in C, as bytes, and what is left is read once.
    """
    data = text.encode("utf-8", "surrogatepass")
    # Escaped backslashes first, then escaped quotes: a string is then "..." with no
    # quote inside.  Brackets and quotes are ASCII, never inside a UTF-8 sequence.
    marks = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_MARK)
    depth = deepest = 0
    inside = False
    inner = unclosed = 0  # depth and deepest, counting the brackets of the open string
    for mark in marks:
        if mark == _QUOTE:
            inside = not inside
            inner = depth
        elif inside:
            inner += _STEP[mark]
            unclosed = max(unclosed, inner)
        else:
            depth += _STEP[mark]
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    return deepest
    return max(deepest, unclosed) if inside else deepest


class _Bad(Exception):
    """Internal: a field failed its type check; message names the path."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Bad(f"duplicate key {_short(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Bad(f"{name} is not a JSON number")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _raise_problems(msg: object, error: Callable[[str], ProtocolError]) -> None:
    if isinstance(msg, Message):
        found = msg.problems()
        if found:
            raise error(f"{msg.TYPE!r} frame: " + "; ".join(found))


def _to_json(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _to_json(getattr(value, f.name))
            for f in fields(value)
            if not (f.metadata.get(_OMIT_KEY) and getattr(value, f.name) is None)
        }
    if isinstance(value, tuple):
        return [_to_json(item) for item in value]
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = get_type_hints(cls)
        _HINTS[cls] = found
    return found


def _where(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _build(cls: type, doc: object, path: str) -> Any:
    """Check ``doc`` (JSON form) against dataclass ``cls`` and build an instance."""
    if not isinstance(doc, dict):
        raise _Bad(f"{path or 'frame'} must be an object")
    hints = _hints(cls)
    known = {f.name: f for f in fields(cls)}
    extra = sorted(set(doc) - set(known))
    if extra:
        raise _Bad(f"unexpected field {_short(_where(path, extra[0]))}")
    values: dict[str, Any] = {}
    for name, spec in known.items():
        where = _where(path, name)
        if name not in doc:
            if spec.init and _has_default(spec):
                continue
            raise _Bad(f"missing field {where!r}")
        values[name] = _value(doc[name], hints[name], where)
    return cls(**values)


def _has_default(spec: Any) -> bool:
    return spec.default is not MISSING or spec.default_factory is not MISSING


def _value(value: object, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(value, inner, path)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad(f"{path} must be a string")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad(f"{path} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Bad(f"{path} must be an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return value
        raise _Bad(f"{path} must be a number")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Bad(f"{path} must be a list")
        item = get_args(tp)[0]
        return tuple(_value(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Bad(f"{path} must be an object")
        item = get_args(tp)[1]
        if item is Any:
            return value
        return {k: _value(v, item, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and is_dataclass(tp):
        return _build(tp, value, path)
    raise LocalProtocolError(f"no codec for type {tp!r} at {path}")  # pragma: no cover


__all__ = [
    "EVENT_KINDS",
    "MAX_DEPTH",
    "MAX_FRAME_BYTES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "RUN_END_KINDS",
    "Ack",
    "Activate",
    "Auth",
    "CancelRun",
    "ErrorFrame",
    "Event",
    "Events",
    "FlowAck",
    "FlowPush",
    "FlowRef",
    "Hello",
    "Inventory",
    "JSONObject",
    "Message",
    "RunAck",
    "SealedSecret",
    "SecretAck",
    "SecretPush",
    "StartRun",
    "Status",
    "Welcome",
    "decode",
    "encode",
    "error_frame",
    "nesting_depth",
]
