"""Flow versions, the one active version per flow id, and the meta table."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from agent.store import FlowConflict, FlowRecord, SqliteStore, UnknownFlow


def flow(flow_id: str, version: int, *, active: bool = False, body: str = "") -> FlowRecord:
    definition = f'{{"id": "{flow_id}", "version": {version}{body}}}'
    return FlowRecord(
        flow_id=flow_id,
        version=version,
        definition=definition,
        sha256=hashlib.sha256(definition.encode()).hexdigest(),
        active=active,
        signature=f"sig-{flow_id}-{version}",
        received_at=1000.0 + version,
    )


def active_version(store: SqliteStore, flow_id: str) -> int | None:
    rec = store.active_flow(flow_id)
    return None if rec is None else rec.version


def test_put_and_get_a_flow_version(store: SqliteStore) -> None:
    store.put_flow(flow("orders", 1))
    assert store.get_flow("orders", 1) == flow("orders", 1)
    assert store.get_flow("orders", 2) is None
    assert store.active_flow("orders") is None  # stored, not activated


def test_put_flow_is_idempotent_and_refuses_other_content(store: SqliteStore) -> None:
    store.put_flow(flow("orders", 1, active=True))
    store.put_flow(flow("orders", 1, active=True))
    store.put_flow(flow("orders", 1))  # an inactive copy does not deactivate it
    assert store.list_flows(active_only=False) == [flow("orders", 1, active=True)]

    with pytest.raises(FlowConflict, match="orders version 1 is already stored"):
        store.put_flow(flow("orders", 1, body=', "tampered": true'))
    assert store.get_flow("orders", 1) == flow("orders", 1, active=True)


def test_put_active_flow_switches_the_active_version(store: SqliteStore) -> None:
    store.put_flow(flow("orders", 1, active=True))
    store.put_flow(flow("orders", 2, active=True))
    store.put_flow(flow("invoices", 7, active=True))
    assert active_version(store, "orders") == 2
    assert [(f.flow_id, f.version) for f in store.list_flows()] == [
        ("invoices", 7),
        ("orders", 2),
    ]
    assert [(f.flow_id, f.version, f.active) for f in store.list_flows(active_only=False)] == [
        ("invoices", 7, True),
        ("orders", 1, False),
        ("orders", 2, True),
    ]


def test_activate_an_earlier_version_rolls_back(store: SqliteStore) -> None:
    for version in (1, 2, 3):
        store.put_flow(flow("orders", version, active=True))
    store.activate("orders", 1)
    assert active_version(store, "orders") == 1
    assert [f.version for f in store.list_flows()] == [1]
    store.activate("orders", 1)  # again: still exactly one
    assert [f.version for f in store.list_flows()] == [1]


def test_activating_an_unknown_version_changes_nothing(store: SqliteStore) -> None:
    store.put_flow(flow("orders", 1, active=True))
    with pytest.raises(UnknownFlow, match="orders version 9 is not stored"):
        store.activate("orders", 9)
    assert active_version(store, "orders") == 1


def test_activate_inside_a_failed_transaction_is_undone(store: SqliteStore) -> None:
    store.put_flow(flow("orders", 1, active=True))
    store.put_flow(flow("orders", 2))
    with pytest.raises(RuntimeError), store.transaction():
        store.activate("orders", 2)
        assert active_version(store, "orders") == 2
        raise RuntimeError("the runner failed to record the switch")
    assert active_version(store, "orders") == 1


def test_refusals_inside_a_callers_transaction_leave_it_usable(store: SqliteStore) -> None:
    store.put_flow(flow("orders", 1, active=True))
    with store.transaction():
        with pytest.raises(UnknownFlow):
            store.activate("orders", 9)
        with pytest.raises(FlowConflict):
            store.put_flow(flow("orders", 1, active=True, body=', "tampered": true'))
        store.put_flow(flow("orders", 2, active=True))
    assert active_version(store, "orders") == 2
    assert store.get_flow("orders", 1) == flow("orders", 1)  # kept, now inactive


def test_the_database_itself_allows_one_active_version(store: SqliteStore, state_dir: Path) -> None:
    store.put_flow(flow("orders", 1, active=True))
    store.put_flow(flow("orders", 2))
    other = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            other.execute("UPDATE flows SET active = 1 WHERE flow_id = 'orders'")
    finally:
        other.close()
    assert active_version(store, "orders") == 1


def test_meta_values_are_stored_replaced_and_kept(state_dir: Path) -> None:
    with SqliteStore.open(state_dir) as store:
        assert store.get_meta("agent_id") is None
        store.set_meta("agent_id", "a-1")
        store.set_meta("agent_id", "a-2")
        store.set_meta("region", "eu")
    with SqliteStore.open(state_dir) as store:
        assert store.get_meta("agent_id") == "a-2"
        assert store.get_meta("region") == "eu"
