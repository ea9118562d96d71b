"""``flow-agent status``: read the state directory without its lock.

The daemon holds the directory lock and the database's one writer
connection; this module opens ``state.db`` read-only (``mode=ro``), which WAL
mode allows next to a live writer, and reads identity, link status, flows,
run counts and outbox depth.  It never writes and never takes the lock, so
it works while the daemon runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agent.errors import OperationError
from agent.identity import Identity, load_identity
from agent.link.state import META_KEY, REPAIR_HINT, LinkState, LinkStatus
from agent.protocol.session import classify_close
from agent.store.files import DB_NAME, LOCK_NAME


@dataclass(frozen=True, kw_only=True)
class AgentStatus:
    state_dir: Path
    identity: Identity | None
    daemon_pid: int | None  # a live process holding the state directory, if any
    link: LinkStatus
    flows: list[dict[str, Any]]
    runs: dict[str, int]
    outbox_depth: int
    last_seq: int

    def to_json(self) -> dict[str, Any]:
        link: dict[str, Any] = {
            "state": self.link.state.value,
            "since": _when(self.link.since),
            "detail": self.link.detail,
            "session_id": self.link.session_id,
        }
        if self.link.state.terminal:
            link["action"] = REPAIR_HINT
        return {
            "state_dir": str(self.state_dir),
            "paired": self.identity is not None,
            "identity": None if self.identity is None else _public(self.identity),
            "daemon": {"running": self.daemon_pid is not None, "pid": self.daemon_pid},
            "link": link,
            "flows": self.flows,
            "runs": self.runs,
            "outbox": {"depth": self.outbox_depth, "last_seq": self.last_seq},
        }


def _public(identity: Identity) -> dict[str, Any]:
    doc = identity.to_json()
    doc.pop("signing_key", None)
    return doc


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _live_pid(state_dir: Path) -> int | None:
    """The pid of the process holding the state directory's lock, if any.

    Only looked at, never taken: taking the lock, even briefly, could make a
    starting daemon fail.  Linux lists every ``flock`` in ``/proc/locks``;
    elsewhere the pid written into the lock file is trusted when that
    process exists.
    """
    path = state_dir / LOCK_NAME
    try:
        inode = path.stat().st_ino
    except OSError:
        return None
    try:
        with open("/proc/locks", encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return _pid_in_file(path)
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4711 08:01:123456 0 EOF"
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
            try:
                return int(parts[4])
            except ValueError:
                return None
    return None


def _pid_in_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text(encoding="ascii").strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


class _Empty(Exception):
    """The database exists but has no schema yet."""


def _table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def read_status(state_dir: Path) -> AgentStatus:
    identity = load_identity(state_dir)
    path = state_dir / DB_NAME
    flows: list[dict[str, Any]] = []
    runs: dict[str, int] = {}
    link = LinkStatus(state=LinkState.NEVER)
    depth = last_seq = 0
    if path.exists():
        try:
            conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error as exc:
            raise OperationError(f"cannot open {path} to read: {exc}") from None
        try:
            with conn:
                if not _table(conn, "meta"):
                    # A daemon is creating the database right now: nothing to show yet.
                    raise _Empty
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
                link = LinkStatus.from_text(row[0] if row else None)
                synced = _table(conn, "link_flows")
                sql = (
                    "SELECT f.flow_id, f.version, f.sha256, l.tenant FROM flows f"
                    + (
                        " LEFT JOIN link_flows l ON l.flow_id = f.flow_id"
                        if synced
                        else ", (SELECT NULL AS tenant) l"
                    )
                    + " WHERE f.active = 1 ORDER BY f.flow_id"
                )
                for flow_id, version, sha256, tenant in conn.execute(sql):
                    origin = (
                        "control plane"
                        if identity is not None and tenant == identity.tenant
                        else "local"
                    )
                    flows.append(
                        {"id": flow_id, "version": version, "sha256": sha256, "origin": origin}
                    )
                for status, count in conn.execute(
                    "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status"
                ):
                    runs[str(status)] = int(count)
                if _table(conn, "outbox"):
                    (last_seq,) = conn.execute("SELECT last FROM outbox_seq").fetchone()
                    (first,) = conn.execute("SELECT min(seq) FROM outbox").fetchone()
                    depth = 0 if first is None else last_seq - first + 1
        except _Empty:
            pass
        except sqlite3.Error as exc:
            raise OperationError(f"cannot read {path}: {exc}") from None
        finally:
            conn.close()
    return AgentStatus(
        state_dir=state_dir,
        identity=identity,
        daemon_pid=_live_pid(state_dir),
        link=link,
        flows=flows,
        runs=runs,
        outbox_depth=depth,
        last_seq=last_seq,
    )


def format_status(status: AgentStatus) -> list[str]:
    """The lines ``flow-agent status`` prints."""
    lines = [f"state directory: {status.state_dir}"]
    identity = status.identity
    if identity is None:
        lines.append("identity:        not paired (flow-agent pair TOKEN)")
    else:
        lines += [
            f"agent:           {identity.agent_id} ({identity.name})",
            f"tenant:          {identity.tenant}",
            f"region:          {identity.region}",
            f"control plane:   {identity.url}",
            f"paired at:       {identity.paired_at}",
        ]
    pid = status.daemon_pid
    lines.append("daemon:          " + (f"running (pid {pid})" if pid else "not running"))
    link = status.link
    since = _when(link.since)
    text = link.state.value.replace("_", " ")
    if since:
        text += f" since {since}"
    if link.state is LinkState.CONNECTED and pid is None:
        text += " (stale: no agent is running)"
    elif link.state is LinkState.CONNECTED and link.session_id:
        text += f" (session {link.session_id})"
    lines.append(f"link:            {text}")
    if link.state.terminal:
        code = 4403 if link.state is LinkState.REVOKED else 4401
        lines.append(f"                 {link.detail or classify_close(code).reason}")
        lines.append(f"                 re-pairing is needed: {REPAIR_HINT}")
    elif link.detail and link.state is LinkState.DISCONNECTED:
        lines.append(f"                 last reason: {link.detail}")
    if status.flows:
        listed = ", ".join(
            f"{f['id']} v{f['version']}" + (" (local)" if f["origin"] == "local" else "")
            for f in status.flows
        )
        lines.append(f"flows:           {listed}")
    else:
        lines.append("flows:           none")
    counts = ", ".join(f"{k} {v}" for k, v in status.runs.items() if v) or "none"
    lines.append(f"runs:            {counts}")
    lines.append(f"outbox:          {status.outbox_depth} event(s) waiting for the control plane")
    return lines


def status_json(status: AgentStatus) -> str:
    return json.dumps(status.to_json(), indent=2)


__all__ = ["AgentStatus", "format_status", "read_status", "status_json"]
