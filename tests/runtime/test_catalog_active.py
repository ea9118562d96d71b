"""The catalog's active flow: kept between runs, and never stale after an activation."""

from __future__ import annotations

from typing import Any

import pytest

from agent.flow.model import canonical_json, parse_flow
from agent.runtime.catalog import Catalog
from agent.store.base import FlowRecord
from agent.store.sqlite import SqliteStore


def _doc(version: int, *, message: str = "done") -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "greet",
        "version": version,
        "start": "stop",
        "elements": {"stop": {"type": "end", "status": "failed", "message": message}},
    }


def _store_flow(store: SqliteStore, doc: dict[str, Any], *, active: bool) -> None:
    parsed = parse_flow(doc)
    store.put_flow(
        FlowRecord(
            flow_id=parsed.id,
            version=parsed.version,
            definition=canonical_json(doc),
            sha256=parsed.sha256,
            active=active,
            signature=None,
            received_at=0.0,
        )
    )


def test_the_active_engine_is_kept_and_follows_every_activation(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    definitions_read: list[str] = []
    read_definition = store.active_flow

    def counted(flow_id: str) -> FlowRecord | None:
        definitions_read.append(flow_id)
        return read_definition(flow_id)

    monkeypatch.setattr(store, "active_flow", counted)
    catalog = Catalog(store)
    assert catalog.active("greet") is None
    _store_flow(store, _doc(1), active=True)
    first = catalog.active("greet")
    assert first is not None and first.flow.version == 1
    assert catalog.active("greet") is first  # compiled once
    assert definitions_read == ["greet"]  # and its definition not read again
    # The link stores and activates through the store, not through the catalog.
    _store_flow(store, _doc(2, message="v2"), active=False)
    assert catalog.active("greet") is first  # stored, not active
    store.activate("greet", 2)
    second = catalog.active("greet")
    assert second is not None and second.flow.version == 2
    store.activate("greet", 1)
    assert catalog.active("greet") is first  # back: the engine of v1 again
    # An exact version stays reachable whatever is active.
    assert catalog.version("greet", 2) is second


def test_a_second_catalog_on_the_same_store_sees_the_same_active_version(
    store: SqliteStore,
) -> None:
    one, two = Catalog(store), Catalog(store)
    _store_flow(store, _doc(1), active=True)
    assert one.active("greet") is not None
    _store_flow(store, _doc(2), active=True)
    engine = one.active("greet")
    assert engine is not None and engine.flow.version == 2
    other = two.active("greet")
    assert other is not None and other.flow.sha256 == engine.flow.sha256
