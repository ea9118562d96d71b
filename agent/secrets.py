"""The agent's secret store: AES-GCM at rest, and secrets sealed to one agent.

At rest
-------
Secrets live in the ``secrets`` table of the state database (migration 3),
one row per name: a fresh 96-bit nonce and the AES-256-GCM ciphertext (tag
included).  The key is 32 random bytes in ``STATE_DIR/secrets.key`` (0600,
created on the first ``set``), or in a file the operator supplies
(``--key-file``), for instance on another mount or from a secret manager.
The secret's name is bound as associated data: a ciphertext copied to
another name does not open.  Nothing but the name and the ciphertext is
written; no log line, error or exception carries a value.

Sealed delivery
---------------
The control plane can send a secret to one agent without learning how it is
stored and without anyone on the path reading it: ``seal`` (the control
plane's side) encrypts to the agent's X25519 public key with an ephemeral
X25519 key, HKDF-SHA256 and AES-256-GCM, the agent id bound as associated
data; ``open_sealed`` (the agent's side) opens it with the private key in
``STATE_DIR/sealing.key``.  docs/secrets.md specifies the format.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.errors import ConfigError, OperationError, StoreError
from agent.hardening import forbid_core_dumps
from agent.protocol.sealing import (
    MAX_VALUE_BYTES,
    SEALED_ALG,
    SEALED_VERSION,
    SealedSecretInvalid,
    check_name,
    open_sealed,
    public_key_text,
    seal,
)
from agent.protocol.sealing import check_value as _check_value
from agent.store.connection import translate

if TYPE_CHECKING:
    from agent.store.sqlite import SqliteStore

log = logging.getLogger("flow_agent.secrets")

KEY_FILE: Final = "secrets.key"
SEALING_KEY_FILE: Final = "sealing.key"
KEY_BYTES: Final = 32

_AAD_AT_REST: Final = b"flow-agent secret v1\x00"
_NONCE_BYTES: Final = 12
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SecretKeyError(ConfigError):
    """The key file is missing, unreadable or not a key."""


class SecretUnreadable(OperationError):
    """A stored secret does not decrypt (another key, or a damaged row)."""


# -- key files ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decode_key(raw: bytes, path: Path) -> bytes:
    if len(raw) == KEY_BYTES:
        return raw
    try:
        text = raw.decode("ascii").strip()
        key = _unb64(text.replace("+", "-").replace("/", "_"))
    except (UnicodeDecodeError, binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretKeyError(
            f"{path} is not a key: expected {KEY_BYTES} bytes, raw or in base64",
            hint="create one with: head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE",
        )
    return key


def read_key_file(path: Path) -> bytes:
    """Read a 32-byte key (raw, or base64 text); a loose mode is warned about."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SecretKeyError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise SecretKeyError(f"cannot open key file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            log.warning(
                "key file %s is readable by other users (mode %o); chmod 600 it",
                path,
                stat.S_IMODE(st.st_mode),
            )
        raw = os.read(fd, 4096)
    except OSError as exc:
        raise SecretKeyError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return _decode_key(raw, path)


def create_key_file(path: Path) -> bytes:
    """Create ``path`` (0600) with a fresh key, or read it if it appeared meanwhile."""
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, _CREATE_FLAGS, 0o600)
    except FileExistsError:
        return read_key_file(path)
    except OSError as exc:
        raise SecretKeyError(f"cannot create key file {path}: {exc.strerror or exc}") from None
    try:
        # fchmod: the umask may have narrowed 0600 further, never widened it,
        # but an odd umask must not leave a half-readable key either.
        os.fchmod(fd, 0o600)
        os.write(fd, (_b64(key) + "\n").encode("ascii"))
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise SecretKeyError(f"cannot write key file {path}: {exc.strerror or exc}") from None
    os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


class KeySource:
    """Where the at-rest key comes from: a supplied file, or the state directory's."""

    def __init__(self, *, state_dir: Path, key_file: Path | None = None) -> None:
        self.path = Path(key_file) if key_file is not None else Path(state_dir) / KEY_FILE
        self.supplied = key_file is not None
        self._key: bytes | None = None

    def get(self, *, create: bool) -> bytes:
        if self._key is None:
            forbid_core_dumps()  # the key, and the secrets it opens, enter this process
            if create and not self.supplied:
                self._key = create_key_file(self.path)
            else:
                self._key = read_key_file(self.path)
        return self._key


# -- the store ---------------------------------------------------------------------


class SecretStore:
    """Encrypted secrets in the state database's ``secrets`` table.

    Open it on a state directory whose store is open (``SqliteStore.open``
    locked the directory and brought the schema up to date); it uses its own
    connection to the same file, so reads never wait on the runner's writes.
    """

    def __init__(
        self,
        *,
        db_path: Path,
        keys: KeySource,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        self.db_path = Path(db_path)
        self._keys = keys
        self._clock = clock
        self._busy_timeout = busy_timeout
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.db_path, isolation_level=None, timeout=busy_timeout
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "open the secret store") from exc

    @classmethod
    def for_store(
        cls, store: SqliteStore, *, key_file: Path | None = None, busy_timeout: float = 5.0
    ) -> SecretStore:
        """The secret store of an open ``SqliteStore`` (same file, same directory)."""
        return cls(
            db_path=store.path,
            keys=KeySource(state_dir=store.path.parent, key_file=key_file),
            busy_timeout=busy_timeout,
        )

    def _error(self, exc: sqlite3.Error, doing: str) -> StoreError:
        return translate(exc, doing=doing, path=self.db_path, busy_timeout=self._busy_timeout)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OperationError("the secret store is closed")
        return self._conn

    def set(self, name: str, value: str) -> None:
        """Store (or replace) ``name``; the key file is created on first use."""
        check_name(name)
        data = _check_value(value)
        aead = AESGCM(self._keys.get(create=True))
        nonce = os.urandom(_NONCE_BYTES)
        sealed = aead.encrypt(nonce, data, _AAD_AT_REST + name.encode("utf-8"))
        now = float(self._clock())
        try:
            self._db().execute(
                "INSERT INTO secrets (name, nonce, ciphertext, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "nonce = excluded.nonce, ciphertext = excluded.ciphertext, "
                "updated_at = excluded.updated_at",
                (name, nonce, sealed, now, now),
            )
        except sqlite3.Error as exc:
            raise self._error(exc, f"store secret {name}") from exc

    def get(self, name: str) -> str | None:
        """The value of ``name``, or None when there is no such secret."""
        try:
            row = (
                self._db()
                .execute("SELECT nonce, ciphertext FROM secrets WHERE name = ?", (name,))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise self._error(exc, f"read secret {name}") from exc
        if row is None:
            return None
        key = self._keys.get(create=False)
        try:
            data = AESGCM(key).decrypt(row[0], row[1], _AAD_AT_REST + name.encode("utf-8"))
        except (InvalidTag, ValueError):
            raise SecretUnreadable(
                f"secret {name!r} does not decrypt with the key in {self._keys.path}",
                hint="the key file is not the one the secret was stored with, or the row "
                "is damaged; supply the right key file, or set the secret again",
            ) from None
        return data.decode("utf-8")

    def names(self) -> list[str]:
        try:
            rows = self._db().execute("SELECT name FROM secrets ORDER BY name").fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, "list secrets") from exc
        return [str(row[0]) for row in rows]

    def info(self) -> list[tuple[str, float, float]]:
        """``(name, created_at, updated_at)`` of every secret, by name."""
        try:
            rows = self._db().execute(
                "SELECT name, created_at, updated_at FROM secrets ORDER BY name"
            )
            return [(str(r[0]), float(r[1]), float(r[2])) for r in rows.fetchall()]
        except sqlite3.Error as exc:
            raise self._error(exc, "list secrets") from exc

    def remove(self, name: str) -> bool:
        """Delete ``name``; False when there was no such secret."""
        try:
            cursor = self._db().execute("DELETE FROM secrets WHERE name = ?", (name,))
        except sqlite3.Error as exc:
            raise self._error(exc, f"remove secret {name}") from exc
        return cursor.rowcount == 1

    def put_sealed(
        self, sealed: Mapping[str, Any] | str, *, private_key: X25519PrivateKey, agent_id: str
    ) -> str:
        """Open a secret sealed to this agent and store it; returns its name."""
        name, value = open_sealed(private_key, sealed, agent_id=agent_id)
        self.set(name, value)
        return name

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> SecretStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SecretsView(Mapping[str, str]):
    """The secrets a runner sees: ``overrides`` (``--secret``) over the store.

    Values are decrypted when asked for, so a secret set or rotated while the
    agent runs is used by the next call.  A secret that does not decrypt
    raises ``SecretUnreadable``: the step is not committed, and the run can
    be resumed once the key is right.
    """

    def __init__(
        self, store: SecretStore | None = None, overrides: Mapping[str, str] | None = None
    ) -> None:
        self._store = store
        self._overrides = dict(overrides or {})

    def __getitem__(self, name: str) -> str:
        if name in self._overrides:
            return self._overrides[name]
        value = self._store.get(name) if self._store is not None else None
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        names = set(self._overrides)
        if self._store is not None:
            names.update(self._store.names())
        return iter(sorted(names))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        # Never the values, whatever prints this.
        return f"SecretsView({len(self._overrides)} overrides, store={self._store is not None})"


# -- sealed delivery ---------------------------------------------------------------


def load_sealing_key(state_dir: Path, *, create: bool = True) -> X25519PrivateKey:
    """The agent's X25519 private key for sealed secrets (``sealing.key``, 0600)."""
    path = Path(state_dir) / SEALING_KEY_FILE
    raw = create_key_file(path) if create else read_key_file(path)
    return X25519PrivateKey.from_private_bytes(raw)


# seal, open_sealed and public_key_text live in agent.protocol.sealing (pure, shared
# with the control plane) and are re-exported here.

__all__ = [
    "KEY_FILE",
    "MAX_VALUE_BYTES",
    "SEALED_ALG",
    "SEALED_VERSION",
    "SEALING_KEY_FILE",
    "KeySource",
    "SealedSecretInvalid",
    "SecretKeyError",
    "SecretStore",
    "SecretUnreadable",
    "SecretsView",
    "check_name",
    "create_key_file",
    "load_sealing_key",
    "open_sealed",
    "public_key_text",
    "read_key_file",
    "seal",
]
