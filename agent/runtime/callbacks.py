"""Callbacks of the ``service`` connector: tokens, and feeding the answer to the run.

A service that answers ``{"status": "wait"}`` finishes later by POSTing the
outputs to the callback URL it was given, with the callback token.  This
module holds the pure pieces the local API's route needs:

* ``CallbackIssuer`` mints the token for one element visit of one run:
  ``cb1.VISIT.MAC``, MAC being HMAC-SHA256 over the run id and the visit
  under a 32-byte key in ``STATE_DIR/callback.key`` (0600, created on first
  use).  The token is the same for every retry of that visit, even after a
  restart, so a repeated call hands the service the same token.
* ``complete_callback`` checks the token and feeds the run a
  ``ConnectorDone`` for that visit (through ``Runner.deliver``).  A token
  works once: the run moves past the visit, so a replay finds it no longer
  waiting, and the use is recorded in the store's meta
  (``callback.used:RUN:VISIT``) so a replay is told so plainly.

The route itself (``POST /api/v1/runs/{run_id}/callback``) belongs to the
local API; docs/connectors.md specifies it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from agent.errors import OperationError
from agent.flow.commands import ConnectorDone, ConnectorResult
from agent.flow.engine import EngineMisuse
from agent.secrets import create_key_file

from .runner import Runner, RunNotFound

CALLBACK_KEY_FILE: Final = "callback.key"
TOKEN_PREFIX: Final = "cb1"
CALLBACK_PATH: Final = "/api/v1/runs/{run_id}/callback"
_MAC_LABEL: Final = b"flow-agent callback v1\x00"
_MAX_TOKEN: Final = 200


class CallbackRefused(OperationError):
    """A callback that cannot be applied; ``code`` says why, for the HTTP status.

    ``invalid_token`` (401/403), ``used`` (409), ``not_waiting`` (409),
    ``unknown_run`` (404).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _used_key(run_id: str, visit: int) -> str:
    return f"callback.used:{run_id}:{visit}"


class CallbackIssuer:
    """Mints and checks callback tokens; knows the URL services call back."""

    def __init__(self, *, key: bytes, base_url: str | None) -> None:
        if len(key) < 32:
            raise ValueError("a callback key has at least 32 bytes")
        self._key = key
        self.base_url = base_url.rstrip("/") if base_url else None

    @classmethod
    def for_state_dir(cls, state_dir: Path, *, base_url: str | None) -> CallbackIssuer:
        """The issuer of an agent, its key in ``STATE_DIR/callback.key``.

        ``base_url`` is where services reach the local API (``http://host:8355``);
        None when the agent serves no API, and then a service cannot wait.
        """
        return cls(key=create_key_file(Path(state_dir) / CALLBACK_KEY_FILE), base_url=base_url)

    def _mac(self, run_id: str, visit: int) -> str:
        message = _MAC_LABEL + run_id.encode("utf-8") + b"\x00" + str(visit).encode("ascii")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def token(self, run_id: str, visit: int) -> str:
        return f"{TOKEN_PREFIX}.{visit}.{self._mac(run_id, visit)}"

    def url(self, run_id: str) -> str | None:
        if self.base_url is None:
            return None
        return self.base_url + CALLBACK_PATH.format(run_id=quote(run_id, safe=""))

    def callback(self, run_id: str, visit: int) -> dict[str, str] | None:
        """The ``callback`` object of an action request, or None without an API."""
        url = self.url(run_id)
        return None if url is None else {"url": url, "token": self.token(run_id, visit)}

    def verify(self, run_id: str, token: str) -> int:
        """The visit ``token`` was minted for, or ``CallbackRefused``."""
        parts = token.split(".") if isinstance(token, str) and len(token) < _MAX_TOKEN else []
        if len(parts) == 3 and parts[0] == TOKEN_PREFIX and parts[1].isdigit():
            visit = int(parts[1])
            if hmac.compare_digest(parts[2], self._mac(run_id, visit)):
                return visit
        raise CallbackRefused("invalid_token", f"the callback token is not valid for run {run_id}")


async def complete_callback(
    runner: Runner,
    run_id: str,
    token: str,
    outputs: Mapping[str, Any] | None = None,
    *,
    issuer: CallbackIssuer,
    error: str | None = None,
) -> dict[str, Any]:
    """Apply a service's late answer to the run waiting on it; returns the run result.

    ``outputs`` are the action's outputs (the run takes ``next``); with
    ``error`` the element takes ``fault`` with that message instead.  Raises
    ``CallbackRefused``; the run is unchanged then.
    """
    visit = issuer.verify(run_id, token)
    if runner.store.get_meta(_used_key(run_id, visit)) is not None:
        raise CallbackRefused("used", "this callback token was already used")
    if error is not None:
        result = ConnectorResult(ok=False, message=f"the service reported: {error}"[:2000])
    else:
        if outputs is not None and not isinstance(outputs, Mapping):
            raise CallbackRefused("invalid_outputs", "outputs must be a JSON object")
        result = ConnectorResult(ok=True, outputs=dict(outputs or {}))
    try:
        answer = await runner.deliver(run_id, ConnectorDone(visit=visit, result=result))
    except RunNotFound:
        raise CallbackRefused("unknown_run", f"no run {run_id} on this agent") from None
    except EngineMisuse:
        raise CallbackRefused(
            "not_waiting", f"run {run_id} is no longer waiting for this callback"
        ) from None
    runner.store.set_meta(_used_key(run_id, visit), repr(runner.clock()))
    return answer
