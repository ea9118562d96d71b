"""Fixtures: the real control plane on 127.0.0.1 and an agent paired with it."""

from tests.support.fixtures import agent, cp

__all__ = ["agent", "cp"]
