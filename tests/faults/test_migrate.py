"""Case 10: SIGKILL during the schema migrations, at every write they make.

strace injects the kill: ``-e inject=pwrite64:signal=SIGKILL:when=K`` stops
the process as it enters its K-th ``pwrite64`` (every write SQLite makes to
the database and its WAL), so each kill point is exact and repeatable.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlite_utils import Database

from agent.store.migrations import MIGRATIONS, apply_migrations
from agent.store.sqlite import SqliteStore

from .conftest import LONG, Record
from .harness import ROOT, agent_env

OPEN = (
    "import sys, pathlib; from agent.store.sqlite import SqliteStore; "
    "SqliteStore.open(pathlib.Path(sys.argv[1])).close()"
)


def _schema(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        return [r[0] for r in rows]
    finally:
        conn.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _references(tmp: Path) -> dict[int, list[str]]:
    """The schema after each number of migrations, made without faults."""
    found: dict[int, list[str]] = {}
    for n in range(len(MIGRATIONS) + 1):
        path = tmp / f"ref-{n}.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        apply_migrations(Database(conn), path=str(path), migrations=MIGRATIONS[:n])
        conn.close()
        found[n] = _schema(path)
    return found


def _writes(tmp: Path) -> int:
    trace = tmp / "trace"
    state = tmp / "count"
    subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-o",
            str(trace),
            "-e",
            "trace=pwrite64",
            sys.executable,
            "-c",
            OPEN,
            str(state),
        ],
        check=True,
        cwd=ROOT,
        env=agent_env(),
        timeout=60,
        capture_output=True,
    )
    return sum("pwrite64(" in line for line in trace.read_text().splitlines())


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace injects the kill points")
def test_10_sigkill_at_every_write_of_the_migrations(
    tmp_path: Path, rng: random.Random, record: Record
) -> None:
    """Case 10. A fresh state directory is opened (all migrations run) and killed at write K.

    K covers every write with --long, 8 random ones in CI.  Pass: after each
    kill the database's ``user_version`` matches its schema exactly (the
    schema of that many migrations, never a mix), and the next open
    completes the migrations: latest version, latest schema, integrity ok.
    """
    refs = _references(tmp_path)
    total = _writes(tmp_path)
    points = list(range(1, total + 1)) if LONG else sorted(rng.sample(range(1, total + 1), 8))
    seen_versions: set[int] = set()
    for k in points:
        state = tmp_path / f"k{k}"
        done = subprocess.run(
            [
                "strace",
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=pwrite64",
                "-e",
                f"inject=pwrite64:signal=SIGKILL:when={k}",
                sys.executable,
                "-c",
                OPEN,
                str(state),
            ],
            cwd=ROOT,
            env=agent_env(),
            timeout=60,
            capture_output=True,
        )
        assert done.returncode != 0, f"write {k} was not reached"
        db = state / "state.db"
        if db.exists() and db.stat().st_size:
            version = _version(db)  # a read-write open: the WAL is recovered first
            assert _schema(db) == refs[version], f"kill at write {k}: v{version}, other schema"
            seen_versions.add(version)
        with SqliteStore.open(state) as store:
            assert store.integrity_check() == "ok"
        assert _version(db) == len(MIGRATIONS)
        assert _schema(db) == refs[len(MIGRATIONS)]
    record(
        10,
        writes=total,
        kill_points=len(points),
        versions_left_by_kills=sorted(seen_versions),
        mismatches=0,
    )
