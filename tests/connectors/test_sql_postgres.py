"""The sql connector against a real PostgreSQL server, started for this module.

The server is Debian's ``postgresql`` package (scripts/test.sh installs it):
a throwaway cluster made with ``initdb`` in a temporary directory, listening
on 127.0.0.1 on a free port, password authentication (scram-sha-256).  As
root, the server runs as the ``postgres`` user.  Without the binaries the
module is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from agent.connectors.sql import SqlConnector

from .helpers import free_port
from .sqlhelpers import run_flow, sql_flow, sql_request

ADMIN_PASSWORD = "admin-pw-7d1c"
APP_PASSWORD = "app-pw-91fe"


@dataclass(frozen=True)
class Server:
    port: int

    def dsn(self, user: str = "app", db: str = "crm") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"


def _binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    bindir = _binaries()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    prefix: list[str] = []
    owner: str | None = None
    if os.geteuid() == 0:
        # initdb refuses to run as root.
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        prefix, owner = ["runuser", "-u", "postgres", "--"], "postgres"
    base = Path(tempfile.mkdtemp(prefix="flow-agent-pg-"))
    secret = base / "pwfile"
    secret.write_text(ADMIN_PASSWORD + "\n")
    if owner:
        shutil.chown(base, owner, owner)
        shutil.chown(secret, owner, owner)
    data = base / "data"
    port = free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' "
        "-c fsync=off -c full_page_writes=off"
    )
    try:
        subprocess.run(
            [*prefix, f"{bindir}/initdb", "-D", str(data), "-U", "postgres", f"--pwfile={secret}",
             "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [*prefix, f"{bindir}/pg_ctl", "-D", str(data), "-l", str(base / "log"), "-w",
             "-t", "60", "-o", options, "start"],
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"cannot start PostgreSQL: {exc.stderr.decode()[-500:]} {log[-500:]}")
    try:
        asyncio.run(_provision(port))
        yield Server(port)
    finally:
        subprocess.run(
            [*prefix, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


async def _provision(port: int) -> None:
    import asyncpg

    admin = await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", password=ADMIN_PASSWORD, database="postgres"
    )
    await admin.execute(f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'")
    await admin.execute("CREATE DATABASE crm OWNER app")
    await admin.close()
    app = await asyncpg.connect(
        host="127.0.0.1", port=port, user="app", password=APP_PASSWORD, database="crm"
    )
    await app.execute(
        """
        CREATE TABLE customers (
            id int PRIMARY KEY, name text NOT NULL, balance numeric(30, 10),
            rate float8, joined timestamptz, born date, tags text[], extra jsonb,
            ref uuid, active bool
        );
        INSERT INTO customers VALUES
          (1, 'Ada', 12345678901234567890.0000000001, 0.5, '2026-01-02 03:04:05+00',
           '1815-12-10', '{math,engines}', '{"level": 1.25, "vip": true}',
           '00000000-0000-0000-0000-000000000001', true),
          (2, 'Grace', 1234.5, NULL, NULL, NULL, NULL, NULL, NULL, false),
          (3, 'Linus', 7, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        """
    )
    await app.close()


@pytest.fixture
async def sql() -> AsyncIterator[SqlConnector]:
    connector = SqlConnector(secrets={"crm-db": APP_PASSWORD, "wrong": "not-the-password"})
    yield connector
    await connector.close()


async def test_query_converts_postgres_types(sql: SqlConnector, server: Server) -> None:
    result = await sql.call(
        sql_request(
            server.dsn(),
            "query SELECT * FROM customers WHERE id = :id",
            {"id": 1},
            password_secret="crm-db",
        )
    )
    assert result.ok, result.message
    assert result.outputs is not None
    assert result.outputs["first"] == {
        "id": 1,
        "name": "Ada",
        "balance": Decimal("12345678901234567890.0000000001"),
        "rate": Decimal("0.5"),
        "joined": "2026-01-02T03:04:05+00:00",
        "born": "1815-12-10",
        "tags": ["math", "engines"],
        "extra": {"level": Decimal("1.25"), "vip": True},
        "ref": "00000000-0000-0000-0000-000000000001",
        "active": True,
    }


async def test_flow_values_bind_to_typed_parameters(sql: SqlConnector, server: Server) -> None:
    result = await sql.call(
        sql_request(
            server.dsn(),
            "query SELECT id FROM customers WHERE joined >= :since AND balance > :min "
            "AND extra @> :probe AND name = ANY(:names) AND :id::int = 1",
            {
                "since": "2026-01-01T00:00:00+00:00",
                "min": 0.1,
                "probe": {"vip": True},
                "names": ["Ada", "Grace"],
                "id": "1",
            },
            password_secret="crm-db",
        )
    )
    assert result.ok, result.message
    assert result.outputs is not None and result.outputs["rows"] == [{"id": 1}]


async def test_execute_counts_and_query_runs_insert_returning(
    sql: SqlConnector, server: Server
) -> None:
    inserted = await sql.call(
        sql_request(
            server.dsn(),
            "query INSERT INTO customers (id, name, balance) VALUES (:id, :name, :balance) "
            "RETURNING id, balance",
            {"id": 10, "name": "Barbara", "balance": 0.3},
            password_secret="crm-db",
        )
    )
    assert inserted.ok, inserted.message
    assert inserted.outputs is not None
    assert inserted.outputs["first"] == {"id": 10, "balance": Decimal("0.3000000000")}
    updated = await sql.call(
        sql_request(
            server.dsn(),
            "execute UPDATE customers SET balance = balance + :amount WHERE id >= :id",
            {"amount": 1, "id": 3},
            password_secret="crm-db",
        )
    )
    assert updated.ok, updated.message
    assert updated.outputs == {"row_count": 2}
    deleted = await sql.call(
        sql_request(
            server.dsn(),
            "execute DELETE FROM customers WHERE id = :id",
            {"id": 10},
            password_secret="crm-db",
        )
    )
    assert deleted.outputs == {"row_count": 1}


async def test_a_server_error_faults_with_its_sqlstate(sql: SqlConnector, server: Server) -> None:
    result = await sql.call(
        sql_request(server.dsn(), "query SELECT * FROM nowhere", password_secret="crm-db")
    )
    assert not result.ok
    assert 'relation "nowhere" does not exist (SQLSTATE 42P01)' in result.message


async def test_a_bad_parameter_value_faults_naming_the_parameter(
    sql: SqlConnector, server: Server
) -> None:
    result = await sql.call(
        sql_request(
            server.dsn(),
            "query SELECT id FROM customers WHERE id = :id",
            {"id": 1.5},
            password_secret="crm-db",
        )
    )
    assert not result.ok
    assert "parameter :id (int4): expected a whole number" in result.message


async def test_a_wrong_password_faults_at_once_without_retries_and_is_redacted(
    sql: SqlConnector, server: Server
) -> None:
    result = await sql.call(
        sql_request(server.dsn(), "query SELECT 1", password_secret="wrong", attempts=3)
    )
    assert not result.ok
    assert "password authentication failed" in result.message
    assert "after 1 try" in result.message
    assert "not-the-password" not in result.message


async def test_a_missing_password_secret_faults_naming_it(
    sql: SqlConnector, server: Server
) -> None:
    result = await sql.call(sql_request(server.dsn(), "query SELECT 1", password_secret="nope"))
    assert not result.ok
    assert "secret 'nope'" in result.message and "not in the agent's secret store" in result.message


async def test_connection_refused_is_retried(sql: SqlConnector) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    connector = SqlConnector(secrets={"crm-db": APP_PASSWORD}, sleep=sleep)
    try:
        result = await connector.call(
            sql_request(
                f"postgresql://app@127.0.0.1:{free_port()}/crm",
                "query SELECT 1",
                password_secret="crm-db",
                attempts=3,
            )
        )
    finally:
        await connector.close()
    assert not result.ok
    assert "after 3 tries" in result.message
    assert len(slept) == 2


async def test_a_slow_statement_is_cancelled_at_its_timeout_and_the_pool_recovers(
    sql: SqlConnector, server: Server
) -> None:
    result = await sql.call(
        sql_request(
            server.dsn(),
            "query SELECT pg_sleep(30)",
            password_secret="crm-db",
            timeout=0.5,
            pool_size=1,
        )
    )
    assert not result.ok
    assert "ran over its timeout" in result.message
    again = await sql.call(
        sql_request(server.dsn(), "query SELECT 2 AS two", password_secret="crm-db", pool_size=1)
    )
    assert again.ok, again.message
    assert again.outputs is not None and again.outputs["first"] == {"two": 2}


async def test_max_rows_is_enforced(sql: SqlConnector, server: Server) -> None:
    result = await sql.call(
        sql_request(
            server.dsn(),
            "query SELECT generate_series(1, :n) AS x",
            {"n": 50},
            password_secret="crm-db",
            max_rows=10,
        )
    )
    assert not result.ok
    assert "more than 10 rows" in result.message


async def test_concurrent_calls_share_one_pool(sql: SqlConnector, server: Server) -> None:
    calls = [
        sql.call(
            sql_request(
                server.dsn(), "query SELECT :i::int AS i", {"i": i}, password_secret="crm-db"
            )
        )
        for i in range(10)
    ]
    results = await asyncio.gather(*calls)
    assert all(r.ok for r in results), [r.message for r in results]
    assert sorted(r.outputs["first"]["i"] for r in results if r.outputs) == list(range(10))
    assert len(sql._backends) == 1


async def test_a_flow_runs_against_postgres(server: Server, tmp_path: Path) -> None:
    doc = sql_flow(
        {"type": "sql", "dsn": server.dsn(), "password_secret": "crm-db", "pool_size": 2}
    )
    result = await run_flow(tmp_path / "state", doc, {"cid": 2}, secrets={"crm-db": APP_PASSWORD})
    assert result["status"] == "completed", result
    assert result["outputs"]["customer"]["name"] == "Grace"
    assert result["outputs"]["balance"] == 1234.5
    assert result["outputs"]["updated"] >= 2
