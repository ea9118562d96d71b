"""What the control plane keeps, and the only code that reads or writes it.

All methods are synchronous and run on the database thread
(``Database.run``); each write is one ``BEGIN IMMEDIATE`` transaction.  Times
are Unix seconds from the injected ``clock``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.protocol.errors import KeyInvalid, SignatureInvalid
from agent.protocol.frames import Event
from agent.protocol.signing import flow_sha256, load_public_key, verify_repair
from controlplane.db import Database
from controlplane.errors import Conflict, NotFound, TokenRefused
from controlplane.records import (
    RUN_STATUS_BY_KIND,
    SETTLED_RUN_STATUSES,
    ActiveFlow,
    AgentRecord,
    Clock,
    FlowVersion,
    RunRecord,
    dumps,
    flow_from_row,
    iso,
)

__all__ = [
    "SETTLED_RUN_STATUSES",
    "ActiveFlow",
    "AgentRecord",
    "Clock",
    "FlowVersion",
    "RunRecord",
    "Store",
    "iso",
]


class Store:
    def __init__(self, db: Database, *, clock: Clock = time.time) -> None:
        self.db = db
        self.clock = clock

    # -- tenants --------------------------------------------------------------

    def create_tenant(self, name: str) -> dict[str, Any]:
        now = self.clock()
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM tenants WHERE name=?", (name,)).fetchone():
                raise Conflict(f"tenant {name!r} already exists", code="tenant_exists")
            conn.execute("INSERT INTO tenants(name, created_at) VALUES (?, ?)", (name, now))
        return {"name": name, "created_at": iso(now)}

    def list_tenants(self) -> list[str]:
        rows = self.db.conn.execute("SELECT name FROM tenants ORDER BY name").fetchall()
        return [row["name"] for row in rows]

    def require_tenant(self, name: str) -> None:
        if not self.db.conn.execute("SELECT 1 FROM tenants WHERE name=?", (name,)).fetchone():
            raise NotFound(
                f"no tenant {name!r}",
                code="tenant_unknown",
                hint="create it with `flow-controlplane tenant create NAME`",
            )

    # -- pairing --------------------------------------------------------------

    def create_token(self, *, tenant: str, secret_hash: str, ttl: float) -> float:
        now = self.clock()
        with self.db.tx() as conn:
            self.require_tenant(tenant)
            conn.execute(
                "INSERT INTO tokens(secret_hash, tenant, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (secret_hash, tenant, now, now + ttl),
            )
        return now + ttl

    def pair(
        self,
        *,
        secret_hash: str,
        public_key: str,
        name: str,
        facts: dict[str, Any],
        sealing_key: str | None = None,
        previous: tuple[str, str] | None = None,
    ) -> tuple[AgentRecord, str | None]:
        """Consume the token and register the agent, both or neither.

        ``previous`` is (agent id, signature) from a re-pairing host: when the
        signature by that agent's key verifies (``verify_repair``) and the agent
        is of the token's tenant, it is revoked in the same transaction.
        Returns the new agent and the id of the one revoked, if any.
        """
        now = self.clock()
        with self.db.tx() as conn:
            token = conn.execute(
                "SELECT * FROM tokens WHERE secret_hash=?", (secret_hash,)
            ).fetchone()
            if token is None:
                raise TokenRefused(
                    "this pairing token is unknown to the control plane",
                    code="token_unknown",
                    hint="check it was copied whole, or create a new one",
                )
            if token["used_at"] is not None:
                raise TokenRefused(
                    "this pairing token was already used; tokens work once",
                    code="token_used",
                    hint="create a new token with `flow-controlplane token create`",
                )
            if now >= token["expires_at"]:
                raise TokenRefused(
                    f"this pairing token expired at {iso(token['expires_at'])}",
                    code="token_expired",
                    hint="create a new token with `flow-controlplane token create`",
                )
            retired = None
            if previous is not None and self._proven(
                conn, previous, tenant=token["tenant"], public_key=public_key, token=secret_hash
            ):
                retired = previous[0]
                conn.execute(
                    "UPDATE agents SET revoked_at=COALESCE(revoked_at, ?), online=0 WHERE id=?",
                    (now, retired),
                )
            agent_id = "ag_" + secrets.token_hex(10)
            conn.execute(
                "UPDATE tokens SET used_at=?, agent_id=? WHERE secret_hash=? AND used_at IS NULL",
                (now, agent_id, secret_hash),
            )
            conn.execute(
                "INSERT INTO agents(id, tenant, name, public_key, facts, version, created_at,"
                " sealing_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    agent_id,
                    token["tenant"],
                    name,
                    public_key,
                    dumps(facts),
                    facts.get("agent_version"),
                    now,
                    sealing_key,
                ),
            )
        found = self.get_agent(agent_id)
        assert found is not None
        return found, retired

    @staticmethod
    def _proven(
        conn: sqlite3.Connection,
        previous: tuple[str, str],
        *,
        tenant: str,
        public_key: str,
        token: str,
    ) -> bool:
        """Whether ``previous`` proves the host holds the key of an agent of ``tenant``.

        An agent unknown here (paired with another control plane) or of another
        tenant is left alone, as is one whose proof does not verify: pairing
        goes on either way.
        """
        old_id, signature = previous
        row = conn.execute("SELECT tenant, public_key FROM agents WHERE id=?", (old_id,)).fetchone()
        if row is None or row["tenant"] != tenant:
            return False
        try:
            verify_repair(
                load_public_key(row["public_key"]),
                agent_id=old_id,
                new_public_key=public_key,
                token_hash=token,
                signature=signature,
            )
        except (KeyInvalid, SignatureInvalid):
            return False
        return True

    # -- agents ---------------------------------------------------------------

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        row = self.db.conn.execute("SELECT * FROM agents WHERE id=?", (agent_id,)).fetchone()
        return None if row is None else AgentRecord.from_row(row)

    def tenant_agent(self, tenant: str, agent_id: str) -> AgentRecord:
        found = self.get_agent(agent_id)
        if found is None or found.tenant != tenant:
            raise NotFound(f"no agent {agent_id!r} in tenant {tenant!r}", code="agent_unknown")
        return found

    def list_agents(self, tenant: str) -> list[AgentRecord]:
        self.require_tenant(tenant)
        rows = self.db.conn.execute(
            "SELECT * FROM agents WHERE tenant=? ORDER BY created_at, id", (tenant,)
        ).fetchall()
        return [AgentRecord.from_row(row) for row in rows]

    def agent_connected(self, agent_id: str, *, version: str, facts: dict[str, Any]) -> None:
        with self.db.tx() as conn:
            conn.execute(
                "UPDATE agents SET online=1, version=?, facts=?, last_seen=? WHERE id=?",
                (version, dumps(facts), self.clock(), agent_id),
            )

    def agent_disconnected(self, agent_id: str) -> None:
        with self.db.tx() as conn:
            conn.execute(
                "UPDATE agents SET online=0, last_seen=? WHERE id=?", (self.clock(), agent_id)
            )

    def agent_status(self, agent_id: str, *, version: str, report: dict[str, Any]) -> None:
        with self.db.tx() as conn:
            conn.execute(
                "UPDATE agents SET version=?, status=?, last_seen=? WHERE id=?",
                (version, dumps(report), self.clock(), agent_id),
            )

    def revoke_agent(self, tenant: str, agent_id: str) -> AgentRecord:
        with self.db.tx() as conn:
            self.tenant_agent(tenant, agent_id)
            conn.execute(
                "UPDATE agents SET revoked_at=COALESCE(revoked_at, ?), online=0 WHERE id=?",
                (self.clock(), agent_id),
            )
        return self.tenant_agent(tenant, agent_id)

    def mark_all_offline(self) -> None:
        """At start: no socket survives a restart."""
        with self.db.tx() as conn:
            conn.execute("UPDATE agents SET online=0 WHERE online=1")

    # -- flows ----------------------------------------------------------------

    def publish(
        self,
        *,
        tenant: str,
        definition: dict[str, Any],
        sign: Callable[[int, dict[str, Any]], str],
    ) -> FlowVersion:
        """Store ``definition`` as the next version of its id and make it active."""
        flow_id = definition["id"]
        now = self.clock()
        with self.db.tx() as conn:
            self.require_tenant(tenant)
            row = conn.execute(
                "SELECT MAX(version) FROM flow_versions WHERE tenant=? AND flow_id=?",
                (tenant, flow_id),
            ).fetchone()
            version = (row[0] or 0) + 1
            stored = {**definition, "version": version}
            flow = FlowVersion(
                tenant=tenant,
                flow_id=flow_id,
                version=version,
                definition=stored,
                sha256=flow_sha256(stored),
                signature=sign(version, stored),
                published_at=now,
            )
            conn.execute(
                "INSERT INTO flow_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tenant, flow_id, version, dumps(stored), flow.sha256, flow.signature, now),
            )
            conn.execute(
                "INSERT INTO active_flows(tenant, flow_id, version, serial, chosen_by, updated_at)"
                " VALUES (?, ?, ?, 0, 'publish', ?)"
                " ON CONFLICT(tenant, flow_id) DO UPDATE SET version=excluded.version,"
                " chosen_by='publish', activation_signature=NULL, updated_at=excluded.updated_at",
                (tenant, flow_id, version, now),
            )
        return flow

    def activate(
        self, *, tenant: str, flow_id: str, version: int, sign: Callable[[int], str]
    ) -> ActiveFlow:
        """Make ``version`` active with the next serial; ``sign(serial)`` signs it."""
        with self.db.tx() as conn:
            self.require_tenant(tenant)
            self.flow_version(tenant, flow_id, version)
            row = conn.execute(
                "SELECT serial FROM active_flows WHERE tenant=? AND flow_id=?", (tenant, flow_id)
            ).fetchone()
            serial = (row["serial"] if row else 0) + 1
            conn.execute(
                "UPDATE active_flows SET version=?, serial=?, chosen_by='activate',"
                " activation_signature=?, updated_at=? WHERE tenant=? AND flow_id=?",
                (version, serial, sign(serial), self.clock(), tenant, flow_id),
            )
        active = self.active_flow(tenant, flow_id)
        assert active is not None
        return active

    def flow_version(self, tenant: str, flow_id: str, version: int) -> FlowVersion:
        row = self.db.conn.execute(
            "SELECT * FROM flow_versions WHERE tenant=? AND flow_id=? AND version=?",
            (tenant, flow_id, version),
        ).fetchone()
        if row is None:
            raise NotFound(f"flow {flow_id!r} has no version {version}", code="flow_unknown")
        return flow_from_row(row)

    def active_flow(self, tenant: str, flow_id: str) -> ActiveFlow | None:
        found = self.active_flows(tenant, flow_id=flow_id)
        return found[0] if found else None

    def active_flows(self, tenant: str, *, flow_id: str | None = None) -> list[ActiveFlow]:
        sql = (
            "SELECT v.*, a.serial, a.chosen_by, a.activation_signature FROM active_flows a"
            " JOIN flow_versions v USING (tenant, flow_id, version) WHERE a.tenant=?"
        )
        args: tuple[Any, ...] = (tenant,)
        if flow_id is not None:
            sql += " AND a.flow_id=?"
            args += (flow_id,)
        rows = self.db.conn.execute(sql + " ORDER BY a.flow_id", args).fetchall()
        return [
            ActiveFlow(
                flow=flow_from_row(row),
                serial=row["serial"],
                chosen_by=row["chosen_by"],
                activation_signature=row["activation_signature"],
            )
            for row in rows
        ]

    def list_flows(self, tenant: str) -> list[dict[str, Any]]:
        self.require_tenant(tenant)
        rows = self.db.conn.execute(
            "SELECT v.flow_id, v.version, v.sha256, v.published_at, a.version AS active,"
            " a.serial FROM flow_versions v LEFT JOIN active_flows a USING (tenant, flow_id)"
            " WHERE v.tenant=? ORDER BY v.flow_id, v.version",
            (tenant,),
        ).fetchall()
        flows: dict[str, dict[str, Any]] = {}
        for row in rows:
            entry = flows.setdefault(
                row["flow_id"],
                {
                    "id": row["flow_id"],
                    "active": row["active"],
                    "serial": row["serial"],
                    "versions": [],
                },
            )
            entry["versions"].append(
                {
                    "version": row["version"],
                    "sha256": row["sha256"],
                    "published_at": iso(row["published_at"]),
                }
            )
        return list(flows.values())

    def record_flow_ack(
        self, agent_id: str, *, flow_id: str, version: int, ok: bool, reason: str | None
    ) -> None:
        with self.db.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO flow_acks VALUES (?, ?, ?, ?, ?, ?)",
                (agent_id, flow_id, version, int(ok), reason, self.clock()),
            )

    def flow_acks(self, agent_id: str) -> list[dict[str, Any]]:
        rows = self.db.conn.execute(
            "SELECT * FROM flow_acks WHERE agent_id=? ORDER BY flow_id, version", (agent_id,)
        ).fetchall()
        return [
            {
                "id": r["flow_id"],
                "version": r["version"],
                "ok": bool(r["ok"]),
                "reason": r["reason"],
                "at": iso(r["at"]),
            }
            for r in rows
        ]

    # -- events ---------------------------------------------------------------

    def ingest_events(self, agent: AgentRecord, events: Sequence[Event]) -> tuple[int, set[str]]:
        """Store each new event once, in order; returns (last contiguous seq, touched run ids)."""
        touched: set[str] = set()
        now = self.clock()
        with self.db.tx() as conn:
            last = conn.execute("SELECT last_seq FROM agents WHERE id=?", (agent.id,)).fetchone()[0]
            for event in events:
                if event.seq <= last:
                    continue  # a resend of what we have: ignored, still acked
                if event.seq != last + 1:
                    break  # a gap: keep nothing past it, the agent resends from last + 1
                conn.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        agent.id,
                        event.seq,
                        event.kind,
                        event.run_id,
                        event.at,
                        dumps(event.data),
                        now,
                    ),
                )
                last = event.seq
                if (
                    event.run_id
                    and event.kind in RUN_STATUS_BY_KIND
                    and self._apply_run_event(conn, agent, event, now)
                ):
                    touched.add(event.run_id)
            conn.execute(
                "UPDATE agents SET last_seq=?, last_seen=? WHERE id=?", (last, now, agent.id)
            )
        return last, touched

    def _apply_run_event(
        self, conn: sqlite3.Connection, agent: AgentRecord, event: Event, now: float
    ) -> bool:
        status = RUN_STATUS_BY_KIND[event.kind]
        data = event.data
        result = data if isinstance(data.get("status"), str) else None
        if result is not None and result["status"] in RUN_STATUS_BY_KIND.values():
            status = result["status"]
        # The version the agent really runs: a dispatched run names none unless asked.
        version = data.get("version") if type(data.get("version")) is int else None
        row = conn.execute("SELECT agent_id FROM runs WHERE id=?", (event.run_id,)).fetchone()
        if row is None:
            # A run the agent started itself (trigger, webhook): known from its first event.
            flow = data.get("flow") if isinstance(data.get("flow"), str) else "?"
            conn.execute(
                "INSERT INTO runs(id, tenant, flow, version, agent_id, inputs, status, result,"
                " origin, acked, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, '{}', ?, ?, 'agent', 1, ?, ?)",
                (
                    event.run_id,
                    agent.tenant,
                    flow,
                    version,
                    agent.id,
                    status,
                    None if result is None else dumps(result),
                    now,
                    now,
                ),
            )
            return True
        if row["agent_id"] != agent.id:
            return False  # never let one agent rewrite another's run
        conn.execute(
            "UPDATE runs SET status=?, result=COALESCE(?, result), version=COALESCE(?, version),"
            " acked=1, updated_at=? WHERE id=?",
            (status, None if result is None else dumps(result), version, now, event.run_id),
        )
        return True

    def events(self, agent_id: str, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.conn.execute(
            "SELECT * FROM events WHERE agent_id=? AND seq>? ORDER BY seq LIMIT ?",
            (agent_id, after, limit),
        ).fetchall()
        return [
            {
                "seq": r["seq"],
                "kind": r["kind"],
                "run_id": r["run_id"],
                "at": r["at"],
                "data": json.loads(r["data"]),
                "received_at": iso(r["received_at"]),
            }
            for r in rows
        ]

    # -- runs -----------------------------------------------------------------

    def create_run(
        self,
        *,
        tenant: str,
        run_id: str,
        flow: str,
        version: int | None,
        agent_id: str,
        inputs: dict[str, Any],
    ) -> tuple[RunRecord, bool]:
        """Record a dispatched run; an existing ``run_id`` returns (existing, False)."""
        now = self.clock()
        with self.db.tx() as conn:
            existing = self._run_row(run_id)
            if existing is not None:
                if existing.tenant != tenant:
                    raise Conflict(f"run id {run_id!r} is taken", code="run_id_taken")
                return existing, False
            conn.execute(
                "INSERT INTO runs(id, tenant, flow, version, agent_id, inputs, status, origin,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'dispatched', 'controlplane',"
                " ?, ?)",
                (run_id, tenant, flow, version, agent_id, dumps(inputs), now, now),
            )
        created = self._run_row(run_id)
        assert created is not None
        return created, True

    def _run_row(self, run_id: str) -> RunRecord | None:
        row = self.db.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else RunRecord.from_row(row)

    def get_run(self, tenant: str, run_id: str) -> RunRecord:
        found = self._run_row(run_id)
        if found is None or found.tenant != tenant:
            raise NotFound(f"no run {run_id!r} in tenant {tenant!r}", code="run_unknown")
        return found

    def list_runs(self, tenant: str, *, limit: int = 100) -> list[RunRecord]:
        self.require_tenant(tenant)
        rows = self.db.conn.execute(
            "SELECT * FROM runs WHERE tenant=? ORDER BY created_at DESC, id DESC LIMIT ?",
            (tenant, limit),
        ).fetchall()
        return [RunRecord.from_row(row) for row in rows]

    def run_acked(
        self,
        agent_id: str,
        *,
        run_id: str,
        accepted: bool,
        reason: str | None,
        message: str | None = None,
    ) -> bool:
        with self.db.tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET acked=1, status=CASE WHEN ? THEN"
                " (CASE status WHEN 'dispatched' THEN 'accepted' ELSE status END)"
                " ELSE 'refused' END, reason=?, reason_message=?, updated_at=?"
                " WHERE id=? AND agent_id=?",
                (int(accepted), reason, message, self.clock(), run_id, agent_id),
            )
        return cur.rowcount > 0

    def unacked_runs(self, agent_id: str) -> list[RunRecord]:
        rows = self.db.conn.execute(
            "SELECT * FROM runs WHERE agent_id=? AND acked=0 AND status='dispatched'"
            " ORDER BY created_at",
            (agent_id,),
        ).fetchall()
        return [RunRecord.from_row(row) for row in rows]

    def request_cancel(self, tenant: str, run_id: str) -> RunRecord:
        with self.db.tx() as conn:
            self.get_run(tenant, run_id)
            conn.execute(
                "UPDATE runs SET cancel_requested=1, updated_at=? WHERE id=?",
                (self.clock(), run_id),
            )
        return self.get_run(tenant, run_id)
