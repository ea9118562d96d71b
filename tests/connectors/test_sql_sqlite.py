"""The sql connector on real SQLite files."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from agent.connectors.sql import SqlConnector

from .sqlhelpers import run_flow, sql_flow, sql_request


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "crm.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, balance NUMERIC,
                                joined TEXT, photo BLOB);
        INSERT INTO customers VALUES (1, 'Ada', 0.1, '2026-01-02T03:04:05+00:00', x'00ff');
        INSERT INTO customers VALUES (2, 'Grace', 1234.5, NULL, NULL);
        INSERT INTO customers VALUES (3, 'Linus', 7, NULL, NULL);
        """
    )
    conn.commit()
    conn.close()
    return path


@pytest.fixture
async def sql(tmp_path: Path) -> AsyncIterator[SqlConnector]:
    connector = SqlConnector(state_dir=tmp_path / "state")
    yield connector
    await connector.close()


def dsn(path: Path, query: str = "") -> str:
    return f"sqlite://{path}{query}"


async def test_query_returns_rows_as_objects_with_exact_numbers(
    sql: SqlConnector, db: Path
) -> None:
    result = await sql.call(
        sql_request(
            dsn(db), "query SELECT * FROM customers WHERE id <= :top ORDER BY id", {"top": 2}
        )
    )
    assert result.ok, result.message
    assert result.outputs is not None
    rows = result.outputs["rows"]
    assert result.outputs["row_count"] == 2
    assert result.outputs["first"] == rows[0]
    assert rows[0] == {
        "id": 1,
        "name": "Ada",
        "balance": Decimal("0.1"),
        "joined": "2026-01-02T03:04:05+00:00",
        "photo": "AP8=",
    }
    assert rows[1]["balance"] == Decimal("1234.5")


async def test_an_empty_result_has_no_first_row(sql: SqlConnector, db: Path) -> None:
    result = await sql.call(
        sql_request(dsn(db), "query SELECT id FROM customers WHERE id = :id", {"id": 99})
    )
    assert result.ok
    assert result.outputs == {"rows": [], "first": None, "row_count": 0}


async def test_execute_returns_the_row_count_and_commits(sql: SqlConnector, db: Path) -> None:
    result = await sql.call(
        sql_request(
            dsn(db),
            "execute UPDATE customers SET balance = balance + :amount WHERE id > :id",
            {"amount": 1, "id": 1},
        )
    )
    assert result.ok, result.message
    assert result.outputs == {"row_count": 2}
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT balance FROM customers WHERE id = 3").fetchone() == (8,)
    conn.close()


async def test_inputs_are_bound_as_data_never_as_sql(sql: SqlConnector, db: Path) -> None:
    hostile = "x'; DROP TABLE customers; --"
    result = await sql.call(
        sql_request(dsn(db), "query SELECT id FROM customers WHERE name = :name", {"name": hostile})
    )
    assert result.ok and result.outputs is not None
    assert result.outputs["rows"] == []
    check = await sql.call(sql_request(dsn(db), "query SELECT count(*) AS n FROM customers"))
    assert check.outputs is not None and check.outputs["first"] == {"n": 3}


@pytest.mark.parametrize(
    ("action", "inputs", "message"),
    [
        ("query SELECT :a, :b", {"a": 1}, ":b have no value"),
        ("query SELECT :a", {"a": 1, "typo": 2}, "typo are no parameter"),
        ("query SELECT ?", {}, "not \\?"),
        ("fetch SELECT 1", {}, "'query SQL' or 'execute SQL'"),
        ("query SELECT * FROM nowhere", {}, "no such table: nowhere"),
        ("query SELECT 1; SELECT 2", {}, "one statement at a time"),
    ],
)
async def test_bad_statements_and_inputs_fault_with_a_reason(
    sql: SqlConnector, db: Path, action: str, inputs: dict[str, int], message: str
) -> None:
    result = await sql.call(sql_request(dsn(db), action, inputs))
    assert not result.ok
    assert result.message
    assert re.search(message, result.message), result.message


async def test_a_failed_statement_rolls_back(sql: SqlConnector, db: Path) -> None:
    result = await sql.call(
        sql_request(
            dsn(db),
            "execute UPDATE customers SET id = 1 WHERE id > :id",  # violates the primary key
            {"id": 0},
        )
    )
    assert not result.ok
    assert "UNIQUE constraint failed" in result.message
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT id FROM customers ORDER BY id")] == [1, 2, 3]
    conn.close()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("sqlite:///{tmp}/missing.db", "must exist"),
        ("sqlite:///{tmp}/state/state.db", "state directory"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///{tmp}/crm.db?cache=shared", "only \\?mode"),
        ("postgresql://user:pw@localhost/db", "carries a password"),
        ("mysql://localhost/db", "not supported"),
        ("", "dsn must be text"),
    ],
)
async def test_bad_dsns_fault_before_touching_anything(
    sql: SqlConnector, db: Path, tmp_path: Path, target: str, message: str
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.db").write_bytes(b"")
    result = await sql.call(sql_request(target.format(tmp=tmp_path), "query SELECT 1"))
    assert not result.ok
    assert re.search(message, result.message), result.message
    assert not (tmp_path / "missing.db").exists()


async def test_read_only_mode_refuses_writes(sql: SqlConnector, db: Path) -> None:
    result = await sql.call(
        sql_request(dsn(db, "?mode=ro"), "execute DELETE FROM customers WHERE id = :id", {"id": 1})
    )
    assert not result.ok
    assert "readonly" in result.message


async def test_a_runaway_query_is_stopped_at_its_timeout(sql: SqlConnector, db: Path) -> None:
    forever = (
        "query WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT count(*) FROM c"
    )
    result = await sql.call(sql_request(dsn(db), forever, timeout=0.3))
    assert not result.ok
    assert "ran over its timeout" in result.message
    # The pooled connection is usable again.
    again = await sql.call(sql_request(dsn(db), "query SELECT 1 AS one"))
    assert again.ok and again.outputs is not None and again.outputs["first"] == {"one": 1}


async def test_more_rows_than_max_rows_fault(sql: SqlConnector, db: Path) -> None:
    result = await sql.call(sql_request(dsn(db), "query SELECT id FROM customers", max_rows=2))
    assert not result.ok
    assert "more than 2 rows" in result.message
    assert (await sql.call(sql_request(dsn(db), "query SELECT id FROM customers", max_rows=3))).ok


async def test_one_pool_per_dsn_serves_concurrent_calls(sql: SqlConnector, db: Path) -> None:
    calls = [
        sql.call(sql_request(dsn(db), "query SELECT :i AS i", {"i": i}, pool_size=2))
        for i in range(12)
    ]
    results = await asyncio.gather(*calls)
    assert [r.outputs["first"]["i"] for r in results if r.outputs] == list(range(12))
    assert len(sql._backends) == 1


async def test_close_closes_the_pools_and_later_calls_fault(db: Path) -> None:
    connector = SqlConnector()
    assert (await connector.call(sql_request(dsn(db), "query SELECT 1 AS x"))).ok
    await connector.close()
    result = await connector.call(sql_request(dsn(db), "query SELECT 1 AS x"))
    assert not result.ok and "closed" in result.message


async def test_a_flow_reads_and_updates_through_the_runner(db: Path, tmp_path: Path) -> None:
    doc = sql_flow({"type": "sql", "dsn": dsn(db), "timeout": 5})
    result = await run_flow(tmp_path / "state", doc, {"cid": 2})
    assert result["status"] == "completed", result
    outputs = result["outputs"]
    assert outputs["customer"] == {"id": 2, "name": "Grace", "balance": 1234.5}
    assert outputs["balance"] == 1234.5
    assert [r["id"] for r in outputs["rows"]] == [2, 3]
    assert outputs["updated"] == 2


async def test_a_failing_statement_takes_the_fault_path(tmp_path: Path) -> None:
    doc = sql_flow({"type": "sql", "dsn": f"sqlite://{tmp_path}/absent.db"})
    result = await run_flow(tmp_path / "state", doc, {"cid": 1})
    assert result["status"] == "failed"
    assert result["path"] == ["load", "failed", "end_failed"]
    assert "must exist" in result["error"]["message"]
