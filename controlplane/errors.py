"""Errors of the control plane, in the agent's one error tree.

Each carries the HTTP status and machine code the admin API answers with,
so handlers translate them in one place.
"""

from __future__ import annotations

from typing import Any

from agent.errors import OperationError


class ControlPlaneError(OperationError):
    """An admin or pairing request that was understood but refused."""

    status = 400
    code = "bad_request"

    def __init_subclass__(
        cls, *, status: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        # A subclass names its answer in its header: class X(ControlPlaneError, status=404, ...).
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        if code is not None:
            self.code = code
        self.details = details or {}

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        body.update(self.details)
        return body


class BadRequest(ControlPlaneError, status=400, code="bad_request"):
    """A field or body is missing, malformed or out of range."""


class NotFound(ControlPlaneError, status=404, code="not_found"):
    """No tenant, agent, flow or run by the name the request gives."""


class Conflict(ControlPlaneError, status=409, code="conflict"):
    """The request clashes with the current state (a name taken, an agent offline, a run ended)."""


class FlowRejected(ControlPlaneError, status=422, code="flow_invalid"):
    """The flow definition is not valid flow/v1; ``details['issues']`` lists why."""


class SecretRefused(ControlPlaneError, status=422, code="secret_refused"):
    """The agent could not open or store a sealed secret; the message says why."""


class AgentNoAnswer(ControlPlaneError, status=504, code="agent_no_answer"):
    """An online agent did not answer in time; what it did is unknown."""


class TokenRefused(ControlPlaneError, status=401, code="token_unknown"):
    """Pairing refused: ``code`` is token_used, token_expired or token_unknown."""
