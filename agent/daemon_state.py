"""What a running daemon records about itself, read by other processes without its lock.

The daemon writes its lifecycle state (``starting``, ``ready``, ``draining``,
``stopped``) to the store's ``meta`` table on every change; ``flow-agent
status`` and ``flow-agent health`` read it (and the API's bound URL) with a
read-only connection, which WAL mode allows next to the writer.  Kept apart
from ``agent.supervisor`` so those commands import little.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from agent.store.files import DB_NAME

LIFECYCLE_KEY: Final = "daemon.lifecycle"


def read_meta(state_dir: Path, key: str) -> str | None:
    """One ``meta`` value of a state directory, read without its lock (as ``status`` does)."""
    path = state_dir / DB_NAME
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


def read_lifecycle(state_dir: Path) -> dict[str, Any] | None:
    """The lifecycle record a daemon keeps in its store."""
    text = read_meta(state_dir, LIFECYCLE_KEY)
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def lifecycle_json(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The lifecycle record as ``flow-agent status --json`` shows it."""
    if doc is None:
        return None
    since = doc.get("since")
    return {
        "state": doc.get("state"),
        "since": None
        if not isinstance(since, int | float)
        else datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
        "pid": doc.get("pid"),
        "version": doc.get("version"),
    }


def lifecycle_text(doc: dict[str, Any]) -> str:
    shown = lifecycle_json(doc) or {}
    text = str(shown.get("state"))
    if shown.get("since"):
        text += f" since {shown['since']}"
    return text + f" (flow-agent {shown.get('version')})"


__all__ = ["LIFECYCLE_KEY", "lifecycle_json", "lifecycle_text", "read_lifecycle", "read_meta"]
