"""The local API's bearer token: the file that holds it, and how it is checked.

The token lives in ``STATE_DIR/api.token`` (mode 0600): 32 random bytes,
URL-safe base64.  ``flow-agent api-token`` shows it (``load_or_create_token``)
or replaces it (``rotate_token``); a rotation signs every player-page session
out, because the session cookie is derived from the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from agent.errors import ConfigError

log = logging.getLogger("flow_agent.api")

TOKEN_FILE = "api.token"
SESSION_COOKIE = "flow_agent_session"
_TOKEN_BYTES = 32


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, never readable by anyone else."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def load_or_create_token(state_dir: Path) -> str:
    """The API token of this state directory, created on first use."""
    path = state_dir / TOKEN_FILE
    if not path.exists():
        return rotate_token(state_dir)
    return read_token_file(path)


def read_token_file(path: Path) -> str:
    """The token in ``path``: ConfigError when it is missing, unreadable,
    readable by other users, or too short to be a token."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: the API token file does not exist",
            hint="create it with 'flow-agent api-token' (or point api_token_file elsewhere)",
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the API token: {exc.strerror}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        # Someone may already have read it: refuse rather than quietly tighten.
        raise ConfigError(
            f"{path}: the API token file is readable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o})",
            hint="chmod 600 it, or replace it with 'flow-agent api-token --rotate'"
            " (the new file is 0600)",
        )
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the API token: {exc}") from None
    if len(token) < 32:
        raise ConfigError(
            f"{path}: the API token file holds no usable token",
            hint="rotate it with 'flow-agent api-token --rotate'",
        )
    return token


def rotate_token(state_dir: Path, *, path: Path | None = None) -> str:
    """Replace the token (``STATE_DIR/api.token``, or ``path``) with a new
    random one and return it."""
    path = state_dir / TOKEN_FILE if path is None else path
    try:
        if path.parent == state_dir:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        _write_private(path, token)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the API token: {exc.strerror}") from None
    return token


class TokenFile:
    """The API token kept in a file, read again when the file changes.

    So a rotation (``flow-agent api-token --rotate``) takes effect in a
    running agent within ``every`` seconds, without a restart.  A file that
    becomes unusable (removed, opened up to other users) keeps the last good
    token and is logged: failing open is never the answer.
    """

    def __init__(
        self, path: Path, *, every: float = 1.0, mono: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.every = every
        self.mono = mono
        self._token = read_token_file(path)
        self._seen = self._identity()
        self._checked = mono()

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def __call__(self) -> str:
        now = self.mono()
        if now - self._checked < self.every:
            return self._token
        self._checked = now
        seen = self._identity()
        if seen != self._seen:
            self._seen = seen
            try:
                self._token = read_token_file(self.path)
            except ConfigError as exc:
                log.error("the API token was not reloaded, the previous one stays: %s", exc)
            else:
                log.info("the API token changed (%s); the new one applies", self.path)
        return self._token


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison (time does not depend on where they differ)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer(header: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer ...`` header."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def session_value(token: str) -> str:
    """The player's cookie: derived from the token, so the token itself never
    sits in a browser, and rotating the token ends every session."""
    return hmac.new(
        token.encode("utf-8"), b"flow-agent player session v1", hashlib.sha256
    ).hexdigest()


def is_loopback_host(host: str | None) -> bool:
    """Whether a Host header names this machine (localhost or a loopback IP).

    Without a token the API answers only such hosts, so that a web page on a
    DNS name rebound to 127.0.0.1 cannot drive it from a browser.
    """
    if not host:
        return False
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
