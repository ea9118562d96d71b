"""The control plane's operations, shared by the admin API and the admin page.

``ControlPlane`` owns the data directory (keys, database), the store and the
hub of live agent links.  Every operation validates, commits, then pushes to
connected agents, so a push is never ahead of what a reconnecting agent would
get from the database.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import ConfigError, UsageError
from agent.protocol.errors import KeyInvalid
from agent.protocol.frames import CancelRun, FlowPush, SealedSecret, SecretPush
from agent.protocol.sealing import SealedSecretInvalid, check_name, load_sealing_public_key, seal
from agent.protocol.session import CloseCode
from agent.protocol.signing import (
    PairingToken,
    fingerprint,
    generate_private_key,
    load_public_key,
    new_token_secret,
    private_key_bytes,
    private_key_from_bytes,
    public_key_b64,
    sign_activation,
    sign_flow,
    token_secret_hash,
)
from controlplane.db import Database
from controlplane.errors import (
    AgentNoAnswer,
    BadRequest,
    Conflict,
    FlowRejected,
    NotFound,
    SecretRefused,
)
from controlplane.hub import AgentConnection, Hub, flow_frames, start_run_frame
from controlplane.settings import DEFAULT_TOKEN_TTL, Settings
from controlplane.store import (
    ActiveFlow,
    AgentRecord,
    Clock,
    FlowVersion,
    RunRecord,
    Store,
    iso,
)

log = logging.getLogger("controlplane")

SIGNING_KEY_FILE: Final = "signing.key"
ADMIN_KEY_FILE: Final = "admin.key"
DB_FILE: Final = "controlplane.db"
LOCK_FILE: Final = ".lock"
NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
RUN_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENDED: Final = frozenset({"completed", "failed", "cancelled", "refused"})
SECRET_ACK_TIMEOUT: Final = 15.0
_REPAIR: Final = "re-pair the agent to enable sealed secrets (flow-agent pair with a new token)"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_data_dir(path: Path) -> tuple[Ed25519PrivateKey, str, list[str]]:
    """Create DATA (0700), the signing key and the admin key (0600) when missing."""
    notes: list[str] = []
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not any(path.iterdir()):
            os.chmod(path, 0o700)
        signing = path / SIGNING_KEY_FILE
        if not signing.exists():
            _write_private(signing, private_key_bytes(generate_private_key()))
            notes.append(f"created a new signing key in {signing}")
        admin = path / ADMIN_KEY_FILE
        if not admin.exists():
            _write_private(admin, ("fcpa_" + secrets.token_urlsafe(32) + "\n").encode())
            notes.append(f"created the admin key in {admin} (keep it secret)")
        key = private_key_from_bytes(signing.read_bytes())
        admin_key = admin.read_text(encoding="utf-8").strip()
    except (OSError, KeyInvalid) as exc:
        raise ConfigError(
            f"cannot use the data directory {path}: {exc}",
            hint="check the path and its permissions (the directory must be writable)",
        ) from exc
    if not admin_key:
        raise ConfigError(f"{path / ADMIN_KEY_FILE} is empty", hint="delete it to make a new one")
    return key, admin_key, notes


class ControlPlane:
    def __init__(self, settings: Settings, *, clock: Clock = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.signing_key, self.admin_key, self.notes = prepare_data_dir(settings.data_dir)
        self.fingerprint = fingerprint(self.signing_key)
        self.db = Database(settings.data_dir / DB_FILE)
        self.store = Store(self.db, clock=clock)
        self.hub = Hub(
            db=self.db, store=self.store, settings=settings, on_run_change=self._run_changed
        )
        self.public_url = settings.public_url or ""
        self._run_event = asyncio.Event()
        self._lock_fd: int | None = None

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._lock_fd = os.open(self.settings.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise ConfigError(
                f"another flow-controlplane already serves {self.settings.data_dir}",
                hint="stop it first, or give this one another --data directory",
            ) from None
        await self.db.run(self.db.open)
        await self.db.run(self.store.mark_all_offline)

    async def stop(self) -> None:
        await self.hub.close_all(code=CloseCode.SERVER_RESTART)
        await asyncio.to_thread(self.db.close)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def info(self) -> dict[str, Any]:
        return {
            "region": self.settings.region,
            "url": self.public_url,
            "signing_key": public_key_b64(self.signing_key),
            "fingerprint": self.fingerprint,
        }

    # -- tenants and pairing --------------------------------------------------

    async def create_tenant(self, name: object) -> dict[str, Any]:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise BadRequest(
                f"tenant name {name!r} is not valid",
                hint="use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
            )
        return await self.db.run(lambda: self.store.create_tenant(name))

    async def create_token(self, tenant: str, *, ttl: float = DEFAULT_TOKEN_TTL) -> dict[str, Any]:
        if not 0 < ttl <= 30 * 86400:
            raise BadRequest("ttl must be between 1 second and 30 days")
        secret = new_token_secret()
        expires = await self.db.run(
            lambda: self.store.create_token(
                tenant=tenant, secret_hash=token_secret_hash(secret), ttl=ttl
            )
        )
        token = PairingToken(
            url=self.public_url, region=self.settings.region, fp=self.fingerprint, secret=secret
        )
        return {"token": token.encode(), "tenant": tenant, "expires_at": iso(expires)}

    async def pair(self, body: object) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("the pairing request must be a JSON object")
        secret, public_key, name = (
            body.get("token_secret"),
            body.get("public_key"),
            body.get("name"),
        )
        facts = body.get("facts", {})
        if not isinstance(secret, str) or not secret:
            raise BadRequest("token_secret is missing")
        if not isinstance(public_key, str):
            raise BadRequest("public_key is missing")
        try:
            load_public_key(public_key)
        except KeyInvalid as exc:
            raise BadRequest(f"public_key is not usable: {exc.message}") from None
        if not isinstance(name, str) or not 0 < len(name) <= 255:
            raise BadRequest("name must be text of 1-255 characters")
        if not isinstance(facts, dict):
            raise BadRequest("facts must be an object")
        sealing_key = body.get("sealing_key")
        if sealing_key is not None:
            # Optional: agents from before sealed secrets do not send one.
            if not isinstance(sealing_key, str):
                raise BadRequest("sealing_key must be text (base64url X25519 public key)")
            try:
                load_sealing_public_key(sealing_key)
            except SealedSecretInvalid as exc:
                raise BadRequest(f"sealing_key is not usable: {exc.message}") from None
        previous = _previous(body.get("previous"))
        agent, retired = await self.db.run(
            lambda: self.store.pair(
                secret_hash=token_secret_hash(secret),
                public_key=public_key,
                name=name,
                facts=facts,
                sealing_key=sealing_key,
                previous=previous,
            )
        )
        log.info("agent %s paired to tenant %s", agent.id, agent.tenant)
        if retired is not None:
            # Its link, if any, ends now, as after an admin's revoke.
            await self.hub.disconnect(retired, code=CloseCode.REVOKED, reason="agent re-paired")
            log.info("agent %s revoked: its host re-paired as %s", retired, agent.id)
        elif previous is not None:
            log.warning(
                "agent %s re-paired as %s without retiring %s (unknown here, of another"
                " tenant, or its proof does not verify); revoke it if it is not in use",
                agent.name,
                agent.id,
                previous[0],
            )
        return {
            "agent_id": agent.id,
            "tenant": agent.tenant,
            "region": self.settings.region,
            "url": self.public_url,
            "signing_key": public_key_b64(self.signing_key),
            "retired": retired,
        }

    async def revoke(self, tenant: str, agent_id: str) -> AgentRecord:
        agent = await self.db.run(lambda: self.store.revoke_agent(tenant, agent_id))
        await self.hub.disconnect(agent_id, code=CloseCode.REVOKED, reason="agent revoked")
        log.info("agent %s revoked", agent_id)
        return agent

    # -- secrets --------------------------------------------------------------

    async def send_secret(
        self, tenant: str, agent_id: str, *, name: object, value: object
    ) -> dict[str, Any]:
        """Seal ``value`` to one online agent and wait until it stored it.

        The plain value lives only in this call: it is neither stored nor
        logged, and nothing is queued for an agent that is offline.
        """
        if not isinstance(name, str):
            raise BadRequest("name (the secret's name) is required")
        if not isinstance(value, str):
            raise BadRequest("value must be text")
        try:
            check_name(name)
        except UsageError as exc:
            raise BadRequest(exc.message, hint=exc.hint) from None
        agent = await self.db.run(lambda: self.store.tenant_agent(tenant, agent_id))
        if agent.revoked:
            raise Conflict(f"agent {agent_id!r} is revoked", code="agent_revoked")
        if agent.sealing_key is None:
            raise Conflict(
                f"agent {agent_id!r} has no sealing key: it was paired before sealed secrets",
                code="no_sealing_key",
                hint=_REPAIR,
            )
        conn = self.hub.connection(agent_id)
        if conn is None:
            raise Conflict(
                f"agent {agent_id!r} is offline; secrets are sent only to a connected agent",
                code="agent_offline",
                hint="start it (flow-agent run) and try again",
            )
        try:
            sealed = seal(agent.sealing_key, agent_id=agent.id, name=name, value=value)
        except UsageError as exc:
            raise BadRequest(exc.message) from None
        except SealedSecretInvalid:
            raise Conflict(
                f"the stored sealing key of agent {agent_id!r} is not usable",
                code="no_sealing_key",
                hint=_REPAIR,
            ) from None
        frame = SecretPush(name=name, sealed=SealedSecret(**sealed))
        ack = await self.hub.send_secret(conn, frame, timeout=SECRET_ACK_TIMEOUT)
        if ack is None:
            raise AgentNoAnswer(
                f"agent {agent_id!r} did not confirm secret {name!r}",
                hint="check the agent's log; setting the secret again is safe",
            )
        if not ack.ok:
            raise SecretRefused(
                f"agent {agent_id!r} refused secret {name!r}: {ack.reason}",
                hint=_REPAIR if ack.reason == "no_sealing_key" else None,
            )
        log.info("secret %s sealed to agent %s and stored there", name, agent_id)
        return {"agent_id": agent_id, "name": name, "stored": True}

    # -- flows ----------------------------------------------------------------

    async def publish(self, tenant: str, definition: object) -> tuple[FlowVersion, int]:
        """Validate, store as the next version, activate, push; returns (flow, agents reached)."""
        doc = _validated(definition)
        key = self.signing_key

        def sign(version: int, stored: dict[str, Any]) -> str:
            return sign_flow(
                key, tenant=tenant, flow_id=stored["id"], version=version, definition=stored
            )

        flow = await self.db.run(
            lambda: self.store.publish(tenant=tenant, definition=doc, sign=sign)
        )
        frame = FlowPush(
            tenant=tenant,
            id=flow.flow_id,
            version=flow.version,
            definition=flow.definition,
            sha256=flow.sha256,
            signature=flow.signature,
            activate=True,
        )
        reached = await self.hub.push(tenant, [frame])
        log.info(
            "published %s v%d for %s (pushed to %d)", flow.flow_id, flow.version, tenant, reached
        )
        return flow, reached

    async def activate(self, tenant: str, flow_id: str, version: int) -> tuple[ActiveFlow, int]:
        key = self.signing_key

        def sign(serial: int) -> str:
            return sign_activation(
                key, tenant=tenant, flow_id=flow_id, version=version, serial=serial
            )

        active = await self.db.run(
            lambda: self.store.activate(tenant=tenant, flow_id=flow_id, version=version, sign=sign)
        )
        reached = await self.hub.push(tenant, flow_frames(active))
        return active, reached

    # -- runs -----------------------------------------------------------------

    async def dispatch_run(
        self,
        tenant: str,
        *,
        flow: object,
        agent_id: object = None,
        inputs: object = None,
        version: object = None,
        run_id: object = None,
    ) -> tuple[RunRecord, bool]:
        """Record and send ``start_run``; a known ``run_id`` returns the existing run, unsent."""
        if not isinstance(flow, str) or not flow:
            raise BadRequest("flow (the flow id) is required")
        inputs = {} if inputs is None else inputs
        if not isinstance(inputs, dict):
            raise BadRequest("inputs must be an object")
        if version is not None and (type(version) is not int or version < 1):
            raise BadRequest("version must be a positive integer")
        if run_id is not None and (not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id)):
            raise BadRequest("run_id must be 1-64 of A-Z, a-z, 0-9, '_', '.', '-'")
        if agent_id is not None and not isinstance(agent_id, str):
            raise BadRequest("agent must be an agent id")
        await self.db.run(lambda: self.store.require_tenant(tenant))
        if run_id is not None:
            existing = await self._existing_run(tenant, run_id)
            if existing is not None:
                return existing, False
        active = await self.db.run(lambda: self.store.active_flow(tenant, flow))
        if active is None:
            raise NotFound(
                f"flow {flow!r} is not published in tenant {tenant!r}", code="flow_unknown"
            )
        if isinstance(version, int):
            await self.db.run(lambda: self.store.flow_version(tenant, flow, version))
        if agent_id is not None:
            await self.db.run(lambda: self.store.tenant_agent(tenant, agent_id))
            conn = self.hub.connection(agent_id)
            if conn is None:
                raise Conflict(f"agent {agent_id!r} is not online", code="agent_offline")
        else:
            conn = self._pick_agent(tenant)
        chosen = conn.agent.id
        new_id = run_id if isinstance(run_id, str) else _new_run_id(self.clock())
        run, created = await self.db.run(
            lambda: self.store.create_run(
                tenant=tenant,
                run_id=new_id,
                flow=flow,
                version=version if isinstance(version, int) else None,
                agent_id=chosen,
                inputs=inputs,
            )
        )
        if created:
            # If the socket dies now, the run stays unacked and is re-sent after the next welcome.
            await conn.send(start_run_frame(run))
        return run, created

    def _pick_agent(self, tenant: str) -> AgentConnection:
        candidates = self.hub.tenant_connections(tenant)
        if not candidates:
            raise Conflict(
                f"no agent of tenant {tenant!r} is online",
                code="no_agent_online",
                hint="start one with `flow-agent run`, or check `flow-controlplane agents`",
            )
        return secrets.choice(candidates)

    async def _existing_run(self, tenant: str, run_id: str) -> RunRecord | None:
        try:
            return await self.db.run(lambda: self.store.get_run(tenant, run_id))
        except NotFound:
            return None

    async def get_run(self, tenant: str, run_id: str, *, wait: float = 0) -> RunRecord:
        """The run; with ``wait``, first wait up to that long for it to settle."""
        wait = min(max(wait, 0.0), self.settings.max_wait)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            changed = self._run_event  # taken before the read, so no change is missed
            run = await self.db.run(lambda: self.store.get_run(tenant, run_id))
            remaining = deadline - loop.time()
            if run.settled or remaining <= 0:
                return run
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return await self.db.run(lambda: self.store.get_run(tenant, run_id))

    async def cancel_run(self, tenant: str, run_id: str) -> RunRecord:
        run = await self.db.run(lambda: self.store.get_run(tenant, run_id))
        if run.status in ENDED:
            raise Conflict(f"run {run_id!r} already ended ({run.status})", code="run_ended")
        run = await self.db.run(lambda: self.store.request_cancel(tenant, run_id))
        conn = self.hub.connection(run.agent_id) if run.agent_id else None
        if conn is not None:
            await conn.send(CancelRun(run_id=run_id))
        return run

    def _run_changed(self) -> None:
        self._run_event.set()
        self._run_event = asyncio.Event()


_AGENT_ID = re.compile(r"ag_[0-9a-f]{20}")


def _previous(value: object) -> tuple[str, str] | None:
    """A re-pairing host's proof: ``{"agent_id", "signature"}`` (see docs/pairing.md)."""
    if value is None:
        return None
    agent_id = value.get("agent_id") if isinstance(value, dict) else None
    signature = value.get("signature") if isinstance(value, dict) else None
    # Shaped like the ids this control plane hands out (ag_ + 20 hex): the value
    # comes from the request and goes into the log.
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        raise BadRequest("previous.agent_id must be the earlier agent's id (ag_ and 20 hex digits)")
    if not isinstance(signature, str) or not 0 < len(signature) <= 200:
        raise BadRequest("previous.signature must be a base64 Ed25519 signature")
    return agent_id, signature


def _new_run_id(now: float) -> str:
    # Time first so ids sort by creation; 48 random bits keep them unguessable enough to be unique.
    return f"r_{int(now * 1000):012x}{secrets.token_hex(6)}"


def _validated(definition: object) -> dict[str, Any]:
    # Imported here so the rest of the control plane does not depend on the flow package loading.
    from agent.flow.model import FlowInvalid, parse_flow

    if not isinstance(definition, dict):
        raise FlowRejected(
            "the flow is not a JSON object",
            details={"issues": [{"path": "(document)", "message": "not a flow object"}]},
        )
    doc = {k: v for k, v in definition.items() if k != "version"}
    try:
        parse_flow(doc)
    except FlowInvalid as exc:
        issues = [{"path": i.path, "message": i.message} for i in exc.issues]
        raise FlowRejected(
            f"the flow is not valid flow/v1 ({len(issues)} problem(s))",
            details={"issues": issues},
        ) from None
    return doc
