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


class BadRequest(ControlPlaneError):
    status = 400
    code = "bad_request"


class NotFound(ControlPlaneError):
    status = 404
    code = "not_found"


class Conflict(ControlPlaneError):
    status = 409
    code = "conflict"


class FlowRejected(ControlPlaneError):
    """The flow definition is not valid flow/v1; ``details['issues']`` lists why."""

    status = 422
    code = "flow_invalid"


class SecretRefused(ControlPlaneError):
    """The agent could not open or store a sealed secret; the message says why."""

    status = 422
    code = "secret_refused"


class AgentNoAnswer(ControlPlaneError):
    """An online agent did not answer in time; what it did is unknown."""

    status = 504
    code = "agent_no_answer"


class TokenRefused(ControlPlaneError):
    """Pairing refused: ``code`` is token_used, token_expired or token_unknown."""

    status = 401
    code = "token_unknown"
