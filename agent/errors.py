"""One error tree for the whole agent.

``AgentError`` is the root.  ``UsageError`` is "the caller misused us" (exit 2),
``OperationError`` is "the operation failed" (exit 1).  Foreign exceptions are
translated at the edges with ``raise ... from``.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class UsageError(AgentError):
    """Bad flags, unreadable files: the person must change the command."""

    exit_code = 2


class OperationError(AgentError):
    """The operation was understood but failed."""

    exit_code = 1


class ConfigError(AgentError):
    """Configuration or identity is unusable; restarting will not help."""

    exit_code = 78


class StoreError(OperationError):
    """The durable store refused or failed an operation."""


class StateDirLocked(StoreError):
    """Another live process owns the state directory."""


class StoreCorrupt(StoreError):
    """The database failed its integrity check."""
