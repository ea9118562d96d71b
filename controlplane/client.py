"""A small synchronous client of the admin API, for the CLI.

Finds the server through ``--url`` / ``FLOW_CP_URL`` (default
``http://127.0.0.1:8700``) and the admin key through ``--admin-key``, then
``--data DIR`` (``DIR/admin.key``), then ``FLOW_CP_ADMIN_KEY``.  Every failure
becomes an ``AgentError`` whose message says what to do.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from agent.errors import OperationError, UsageError

DEFAULT_URL: Final = "http://127.0.0.1:8700"


def resolve_url(flag: str | None, env: Mapping[str, str]) -> str:
    url = (flag or env.get("FLOW_CP_URL") or DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8700")
    return url


def resolve_admin_key(key: str | None, data: str | None, env: Mapping[str, str]) -> str:
    if key:
        return key.strip()
    if data:
        path = Path(data) / "admin.key"
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(
                f"cannot read the admin key {path}: {exc.strerror or exc}",
                hint="--data must be the server's data directory (you need read access to it)",
            ) from None
        if text:
            return text
        raise UsageError(f"the admin key file {path} is empty")
    if env.get("FLOW_CP_ADMIN_KEY"):
        return env["FLOW_CP_ADMIN_KEY"].strip()
    raise UsageError(
        "no admin key given",
        hint="pass --admin-key KEY, --data DIR (the server's data directory),"
        " or set FLOW_CP_ADMIN_KEY",
    )


class ApiError(OperationError):
    """The control plane refused a request; ``body`` is its JSON error."""

    def __init__(
        self, message: str, *, hint: str | None, status: int, body: dict[str, Any]
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.body = body


def path_part(value: str) -> str:
    return quote(value, safe="")


class AdminClient:
    def __init__(self, *, url: str, admin_key: str, timeout: float = 30.0) -> None:
        self.url = url
        self._key = admin_key
        self.timeout = timeout

    @classmethod
    def from_flags(
        cls,
        *,
        url: str | None,
        admin_key: str | None,
        data: str | None,
        env: Mapping[str, str] | None = None,
    ) -> AdminClient:
        env = os.environ if env is None else env
        return cls(url=resolve_url(url, env), admin_key=resolve_admin_key(admin_key, data, env))

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
            raise OperationError(
                f"cannot reach the control plane at {self.url}: {why}",
                hint="is `flow-controlplane serve` running? point --url or FLOW_CP_URL at it",
            ) from None
        except TimeoutError:
            raise OperationError(
                f"the control plane at {self.url} did not answer in time"
            ) from None
        except (OSError, ValueError) as exc:
            raise OperationError(
                f"talking to the control plane at {self.url} failed: {exc}"
            ) from None

    def _http_error(self, exc: urllib.error.HTTPError) -> ApiError:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = body.get("message") or f"the control plane answered HTTP {exc.code}"
        hint = body.get("hint")
        if exc.code == 401:
            hint = hint or "use the key in the server's DATA/admin.key (--admin-key or --data)"
        return ApiError(
            str(message),
            hint=hint if isinstance(hint, str) else None,
            status=exc.code,
            body=body,
        )
