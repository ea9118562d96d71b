"""The agent's metrics live in ``agent.metrics``; this name stays for existing imports."""

from __future__ import annotations

from agent.metrics import Metrics

__all__ = ["Metrics"]
