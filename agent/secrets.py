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
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import ConfigError, OperationError, StoreError, UsageError
from agent.flow.parse import SECRET_NAME
from agent.hardening import forbid_core_dumps
from agent.store.connection import translate

if TYPE_CHECKING:
    from agent.store.sqlite import SqliteStore

log = logging.getLogger("flow_agent.secrets")

KEY_FILE: Final = "secrets.key"
SEALING_KEY_FILE: Final = "sealing.key"
KEY_BYTES: Final = 32
MAX_VALUE_BYTES: Final = 64 * 1024
SEALED_VERSION: Final = 1
SEALED_ALG: Final = "X25519-HKDF-SHA256-A256GCM"

_AAD_AT_REST: Final = b"flow-agent secret v1\x00"
_AAD_SEALED: Final = b"flow-agent sealed secret v1\x00"
_HKDF_INFO: Final = b"flow-agent sealed secret v1"
_NONCE_BYTES: Final = 12
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SecretKeyError(ConfigError):
    """The key file is missing, unreadable or not a key."""


class SecretUnreadable(OperationError):
    """A stored secret does not decrypt (another key, or a damaged row)."""


class SealedSecretInvalid(OperationError):
    """A sealed secret that is malformed, not for this agent, or tampered with."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a valid secret name",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit "
            "(at most 128 characters)",
        )
    return name


def _check_value(value: str) -> bytes:
    if not isinstance(value, str):
        raise UsageError("a secret value must be text")
    data = value.encode("utf-8")
    if len(data) > MAX_VALUE_BYTES:
        raise UsageError(f"a secret value is limited to {MAX_VALUE_BYTES // 1024} KiB")
    return data


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


def public_key_text(key: X25519PrivateKey | X25519PublicKey) -> str:
    """The public key as the control plane stores it: base64url, no padding."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return _b64(public.public_bytes_raw())


def _public_key(key: X25519PublicKey | bytes | str) -> X25519PublicKey:
    if isinstance(key, X25519PublicKey):
        return key
    try:
        raw = _unb64(key) if isinstance(key, str) else key
        return X25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        raise SealedSecretInvalid("not an X25519 public key (32 bytes, base64url)") from None


def _sealing_key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=_HKDF_INFO)
    return hkdf.derive(shared)


def seal(
    recipient_public_key: X25519PublicKey | bytes | str, *, agent_id: str, name: str, value: str
) -> dict[str, Any]:
    """Seal ``name``/``value`` to one agent (the control plane's side).

    Returns a JSON object: ``{"v", "alg", "epk", "nonce", "ct"}``, the binary
    fields in base64url without padding.
    """
    check_name(name)
    _check_value(value)
    recipient = _public_key(recipient_public_key)
    ephemeral = X25519PrivateKey.generate()
    epk = ephemeral.public_key().public_bytes_raw()
    key = _sealing_key(ephemeral.exchange(recipient), epk, recipient.public_bytes_raw())
    nonce = os.urandom(_NONCE_BYTES)
    plain = json.dumps({"name": name, "value": value}, separators=(",", ":")).encode("utf-8")
    ct = AESGCM(key).encrypt(nonce, plain, _AAD_SEALED + agent_id.encode("utf-8"))
    return {
        "v": SEALED_VERSION,
        "alg": SEALED_ALG,
        "epk": _b64(epk),
        "nonce": _b64(nonce),
        "ct": _b64(ct),
    }


def open_sealed(
    agent_private_key: X25519PrivateKey, sealed: Mapping[str, Any] | str, *, agent_id: str
) -> tuple[str, str]:
    """Open what ``seal`` made for this agent: ``(name, value)``.

    Raises ``SealedSecretInvalid`` for anything malformed, sealed to another
    key or agent id, or altered on the way; the message never quotes it.
    """
    try:
        doc = json.loads(sealed) if isinstance(sealed, str) else dict(sealed)
        if doc.get("v") != SEALED_VERSION or doc.get("alg") != SEALED_ALG:
            raise SealedSecretInvalid(
                f"unsupported sealed secret (want v {SEALED_VERSION}, alg {SEALED_ALG})"
            )
        epk = _unb64(doc["epk"])
        nonce = _unb64(doc["nonce"])
        ct = _unb64(doc["ct"])
    except SealedSecretInvalid:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        raise SealedSecretInvalid(
            "malformed sealed secret (expected an object with v, alg, epk, nonce and ct)"
        ) from None
    if len(nonce) != _NONCE_BYTES:
        raise SealedSecretInvalid("malformed sealed secret (the nonce is not 12 bytes)")
    ephemeral = _public_key(epk)
    recipient = agent_private_key.public_key().public_bytes_raw()
    key = _sealing_key(agent_private_key.exchange(ephemeral), epk, recipient)
    try:
        plain = AESGCM(key).decrypt(nonce, ct, _AAD_SEALED + agent_id.encode("utf-8"))
    except InvalidTag:
        raise SealedSecretInvalid(
            "sealed secret does not open: it was sealed to another agent or key, "
            "or altered on the way"
        ) from None
    try:
        body = json.loads(plain)
        name, value = body["name"], body["value"]
    except (ValueError, TypeError, KeyError):
        raise SealedSecretInvalid("sealed secret opened but holds no name and value") from None
    if not isinstance(name, str) or not isinstance(value, str):
        raise SealedSecretInvalid("sealed secret opened but holds no name and value")
    if not SECRET_NAME.fullmatch(name):
        raise SealedSecretInvalid("sealed secret opened but its name is not a valid secret name")
    return name, value
