"""Where the runner finds flows: the store, plus local files for ``exec``.

Parsed flows (with their compiled templates) and their engines are cached
per (id, version, digest): a flow version is compiled once.  Which version
of a flow id is active is asked of the store on every new run (an
activation from the control plane applies to the next run), but only its
version and digest are read; the definition only for a version not compiled
yet.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.errors import OperationError, UsageError
from agent.flow.engine import DEFAULT_MAX_STEPS, Engine
from agent.flow.model import Flow, FlowInvalid, canonical_json, parse_flow
from agent.store.base import FlowConflict, FlowRecord, Store


class FlowFileError(UsageError):
    """A flow file that cannot be read (exit 2)."""


class FlowFileInvalid(OperationError):
    """A flow file that was read but is not a valid flow."""

    def __init__(self, path: str, issues: list[tuple[str, str]]) -> None:
        self.path = path
        self.issues = issues
        super().__init__("\n".join(f"{path}: {where}: {what}" for where, what in issues))


def read_flow_file(path: Path) -> Flow:
    """Read and parse one flow file; errors say which file and where."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FlowFileError(f"{path}: cannot read the file: {reason}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise FlowFileInvalid(str(path), [("(document)", f"not JSON: {exc}")]) from None
    try:
        return parse_flow(doc)
    except FlowInvalid as exc:
        raise FlowFileInvalid(str(path), [(i.path, i.message) for i in exc.issues]) from None


def read_flow_dir(directory: Path) -> dict[str, Flow]:
    if not directory.is_dir():
        raise FlowFileError(
            f"{directory}: not a directory (--flows takes a directory of flow files)"
        )
    flows: dict[str, Flow] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.json")):
        try:
            flow = read_flow_file(path)
        except FlowFileInvalid as exc:
            problems.append(str(exc))
            continue
        if flow.id in flows:
            problems.append(f"{path}: flow id '{flow.id}' is defined twice in {directory}")
        flows[flow.id] = flow
    if problems:
        raise FlowFileInvalid(str(directory), [("(flows)", p) for p in problems])
    return flows


class Catalog:
    """Flows known to one runtime, by id and version."""

    def __init__(
        self,
        store: Store,
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        clock: Callable[[], float] = time.time,
        local: Iterable[Flow] = (),
    ) -> None:
        self.store = store
        self.max_steps = max_steps
        self.clock = clock
        self._engines: dict[tuple[str, int, str], Engine] = {}
        self._local: dict[str, Flow] = {}
        self._recorded: set[tuple[str, str]] = set()
        for flow in local:
            self.add_local(flow)

    def add_local(self, flow: Flow) -> None:
        """A flow from a file: it becomes the active version of its id."""
        self._local[flow.id] = flow

    def _record(self, flow: Flow) -> None:
        record = FlowRecord(
            flow_id=flow.id,
            version=flow.version,
            definition=canonical_json(flow.definition),
            sha256=flow.sha256,
            active=True,
            signature=None,
            received_at=self.clock(),
        )
        try:
            self.store.put_flow(record)
        except FlowConflict:
            raise OperationError(
                f"flow '{flow.id}' version {flow.version} is already stored in this state "
                "directory with different content",
                hint='give the changed flow a higher "version", or use another --state-dir',
            ) from None

    def engine(self, flow: Flow) -> Engine:
        key = (flow.id, flow.version, flow.sha256)
        engine = self._engines.get(key)
        if engine is None:
            engine = self._engines[key] = Engine(flow, max_steps=self.max_steps)
        return engine

    def active(self, flow_id: str) -> Engine | None:
        """The engine of the version a new run of ``flow_id`` starts on."""
        local = self._local.get(flow_id)
        if local is not None:
            if (local.id, local.sha256) not in self._recorded:
                self._record(local)
                self._recorded.add((local.id, local.sha256))
            return self.engine(local)
        head = self.store.active_head(flow_id)
        if head is None:
            return None
        known = self._engines.get((flow_id, *head))
        if known is not None:
            return known
        record = self.store.active_flow(flow_id)
        return self._from_record(record) if record else None

    def active_ids(self) -> list[str]:
        """Ids of the flows a new run can start on (stored active ones and local files)."""
        ids = {record.flow_id for record in self.store.list_flows(active_only=True)}
        return sorted(ids | set(self._local))

    def version(self, flow_id: str, version: int) -> Engine | None:
        """The engine of an exact version (a run keeps the version it started on)."""
        local = self._local.get(flow_id)
        if local is not None and local.version == version:
            return self.engine(local)
        record = self.store.get_flow(flow_id, version)
        return self._from_record(record) if record else None

    def _from_record(self, record: FlowRecord) -> Engine:
        known = self._engines.get((record.flow_id, record.version, record.sha256))
        if known is not None:
            return known
        try:
            flow = parse_flow(json.loads(record.definition))
        except (ValueError, FlowInvalid) as exc:
            raise OperationError(
                f"stored flow '{record.flow_id}' version {record.version} is not valid: {exc}"
            ) from None
        engine = self.engine(flow)
        self._engines[(record.flow_id, record.version, record.sha256)] = engine
        return engine
