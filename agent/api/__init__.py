"""The local API: run API, player page, health and metrics (docs/api.md)."""

from agent.api.app import MAX_BODY, create_app
from agent.api.auth import load_or_create_token, rotate_token
from agent.api.metrics import Metrics

__all__ = ["MAX_BODY", "Metrics", "create_app", "load_or_create_token", "rotate_token"]
