"""A run stopped mid-way by a store error goes on by itself once the store works again.

A full disk or an I/O error can stop a run between two of its steps while the
agent stays up.  Its last commit stands (status ``running``); nobody drives
it any more.  The daemon's sweep finds such runs and continues them from
their last commit, with the same idempotency key for the call it repeats.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.connectors.registry import ConnectorRegistry
from agent.errors import StoreError
from agent.flow.commands import ConnectorRequest, ConnectorResult
from agent.flow.model import parse_flow
from agent.runtime.catalog import Catalog
from agent.store.sqlite import SqliteStore
from tests.support.agent import AgentUnderTest
from tests.support.controlplane import Cp
from tests.support.waits import until

CALL: dict[str, Any] = {
    "format": "flow/v1",
    "id": "call",
    "values": {"answer": {"type": "object", "access": "output"}},
    "start": "ask",
    "connectors": {"erp": {"type": "http", "base_url": "http://127.0.0.1:9"}},
    "elements": {
        "ask": {
            "type": "message",
            "connector": "erp",
            "action": "POST /x",
            "outputs": {"answer": "body"},
            "next": "done",
        },
        "done": {"type": "end"},
    },
}


class DiskFullOnce:
    """Stands in for the http type; after its first answer the store's next write fails.

    The failure comes where a full disk would: the commit of the call's
    result.  (The real full disk is fault case 5, on a tmpfs; here it comes at
    a known step.)
    """

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.keys: list[str] = []

    async def call(self, request: ConnectorRequest) -> ConnectorResult:
        self.keys.append(request.idempotency_key)
        if len(self.keys) == 1:
            update = self.store.update_run

            def full(*args: Any, **kwargs: Any) -> None:
                self.store.update_run = update  # type: ignore[method-assign]
                raise StoreError("cannot commit: the disk holding state.db is full")

            self.store.update_run = full  # type: ignore[method-assign]
        return ConnectorResult(ok=True, status=200, body={"ok": True})

    async def close(self) -> None:
        pass


async def test_a_stalled_run_goes_on_from_its_last_commit(cp: Cp, agent: AgentUnderTest) -> None:
    registry = ConnectorRegistry()
    running = await agent.start(connected=False, registry=registry)
    connector = DiskFullOnce(running.store)
    registry.register("http", connector)
    running.runner.catalog = Catalog(running.store, local=[parse_flow(CALL)])
    with pytest.raises(StoreError):
        await running.runner.start("call", {})
    [record] = running.store.list_runs()
    assert record.status == "running"  # stopped between two commits, nobody drives it
    await until(
        lambda: running.store.list_runs()[0].status == "completed",
        "the sweep to continue the run",
    )
    assert len(connector.keys) == 2 and len(set(connector.keys)) == 1  # the same visit's key
    result = await running.runner.result_of(record.run_id)
    assert result["outputs"] == {"answer": {"ok": True}}
