"""Flow sync: what the agent checks before a pushed flow may run here.

For a ``flow`` frame, in order: the tenant is this agent's, the control
plane's signature verifies (with the key pinned at pairing), the version is
newer than any accepted before (an older one is only stored, never
activated, and only an ``activate`` frame with a higher serial makes it
active), the definition is valid flow/v1.  Then it is stored and, when asked,
activated.  Anything refused is answered ``flow_ack ok=false`` with the
reason and recorded as a ``flow.rejected`` event; the active version stays
what it was.  A run keeps the version it started on: the catalog resolves
runs by exact version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from agent.flow.model import FlowInvalid, canonical_json, parse_flow
from agent.identity import Identity
from agent.link.outbox import NewEvent, Outbox, iso
from agent.link.state import FlowMark, FlowMarks
from agent.protocol.errors import SignatureInvalid
from agent.protocol.frames import Activate, FlowAck, FlowPush, FlowRef
from agent.protocol.signing import verify_activate, verify_flow_push
from agent.store.base import FlowRecord
from agent.store.sqlite import SqliteStore

log = logging.getLogger("flow_agent.sync")

_MAX_REASON: Final = 1000


class FlowSync:
    """Applies ``flow`` and ``activate`` frames to the store; answers with ``flow_ack``."""

    def __init__(
        self,
        *,
        store: SqliteStore,
        outbox: Outbox,
        identity: Identity,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.identity = identity
        self.marks = FlowMarks(store)
        self.clock = clock
        self._key = identity.cp_key()

    # -- what we have -----------------------------------------------------------

    def inventory(self) -> tuple[FlowRef, ...]:
        """Active flows that came from this tenant through the link."""
        synced = self.marks.synced_ids(tenant=self.identity.tenant)
        return tuple(
            FlowRef(id=rec.flow_id, version=rec.version, sha256=rec.sha256)
            for rec in self.store.list_flows(active_only=True)
            if rec.flow_id in synced
        )

    def is_synced(self, flow_id: str) -> bool:
        return self.marks.get(flow_id, tenant=self.identity.tenant) is not None

    # -- frames -------------------------------------------------------------------

    def on_flow(self, msg: FlowPush) -> FlowAck:
        tenant = self.identity.tenant
        if msg.tenant != tenant:
            return self._reject(
                msg.id, msg.version, f"flow of tenant {msg.tenant!r}; this agent is {tenant!r}"
            )
        try:
            verify_flow_push(self._key, msg)
        except SignatureInvalid as exc:
            return self._reject(msg.id, msg.version, f"signature refused: {exc.message}")
        mark = self.marks.get(msg.id, tenant=tenant)
        stored = self.store.get_flow(msg.id, msg.version)
        if stored is not None and stored.sha256 != msg.sha256:
            return self._reject(
                msg.id,
                msg.version,
                f"version {msg.version} is already stored here with other content",
            )
        older = mark is not None and msg.version <= mark.version
        if older and msg.activate:
            assert mark is not None
            if stored is not None and stored.active:
                return FlowAck(id=msg.id, version=msg.version, ok=True)  # a repeat, nothing to do
            return self._reject(
                msg.id,
                msg.version,
                f"version {msg.version} is not newer than version {mark.version}: ignored"
                " (an older version becomes active only through a signed activate)",
                warn=True,
            )
        try:
            flow = parse_flow(msg.definition)
        except FlowInvalid as exc:
            issues = "; ".join(f"{i.path}: {i.message}" for i in exc.issues)
            return self._reject(msg.id, msg.version, f"invalid flow/v1: {issues}")
        now = self.clock()
        with self.store.transaction():
            if stored is None:
                self.store.put_flow(
                    FlowRecord(
                        flow_id=flow.id,
                        version=flow.version,
                        definition=canonical_json(flow.definition),
                        sha256=msg.sha256,
                        active=False,
                        signature=msg.signature,
                        received_at=now,
                    )
                )
            if msg.activate:
                self.store.activate(msg.id, msg.version)
            if not older:
                serial = 0 if mark is None else mark.serial
                self.marks.put(
                    FlowMark(flow_id=msg.id, tenant=tenant, version=msg.version, serial=serial),
                    now=now,
                )
        log.info("flow %s v%d %s", msg.id, msg.version, "active" if msg.activate else "stored")
        return FlowAck(id=msg.id, version=msg.version, ok=True)

    def on_activate(self, msg: Activate) -> FlowAck:
        tenant = self.identity.tenant
        if msg.tenant != tenant:
            return self._reject(
                msg.id,
                msg.version,
                f"activation for tenant {msg.tenant!r}; this agent is {tenant!r}",
            )
        try:
            verify_activate(self._key, msg)
        except SignatureInvalid as exc:
            return self._reject(msg.id, msg.version, f"activation refused: {exc.message}")
        mark = self.marks.get(msg.id, tenant=tenant)
        if mark is not None and msg.serial <= mark.serial:
            return self._reject(
                msg.id,
                msg.version,
                f"activation serial {msg.serial} is not newer than {mark.serial}: ignored",
                warn=True,
            )
        if self.store.get_flow(msg.id, msg.version) is None:
            return self._reject(
                msg.id, msg.version, f"cannot activate version {msg.version}: it is not stored here"
            )
        now = self.clock()
        with self.store.transaction():
            self.store.activate(msg.id, msg.version)
            version = msg.version if mark is None else max(mark.version, msg.version)
            self.marks.put(
                FlowMark(flow_id=msg.id, tenant=tenant, version=version, serial=msg.serial),
                now=now,
            )
        log.info("flow %s v%d active (activation %d)", msg.id, msg.version, msg.serial)
        return FlowAck(id=msg.id, version=msg.version, ok=True)

    def _reject(self, flow_id: str, version: int, reason: str, *, warn: bool = False) -> FlowAck:
        reason = reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."
        (log.warning if warn else log.error)("flow %s v%d rejected: %s", flow_id, version, reason)
        data = {"flow": flow_id, "version": version, "reason": reason}
        self.outbox.append([NewEvent("flow.rejected", None, iso(self.clock()), data)])
        return FlowAck(id=flow_id, version=version, ok=False, reason=reason)


__all__ = ["FlowSync"]
