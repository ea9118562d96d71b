"""The durable store: runs, flows and settings of one runtime.

Callers depend on the ``Store`` protocol and the records in ``base``;
``SqliteStore`` is the implementation for a local state directory.
"""

from agent.store.base import (
    RUN_STATUSES,
    FlowConflict,
    FlowRecord,
    RunExists,
    RunRecord,
    Store,
    UnknownFlow,
    UnknownRun,
)
from agent.store.sqlite import SqliteStore

__all__ = [
    "RUN_STATUSES",
    "FlowConflict",
    "FlowRecord",
    "RunExists",
    "RunRecord",
    "SqliteStore",
    "Store",
    "UnknownFlow",
    "UnknownRun",
]
