"""This agent's identity: its Ed25519 key and what pairing told it.

Two files in the state directory (0700), both 0600:

* ``agent.key``: the private key, PKCS#8 PEM.  Made on this host by
  ``flow-agent pair``; it never leaves the host.
* ``identity.json``: agent id, tenant, region, control-plane URL, the
  control plane's signing key (checked against the token's fingerprint) and
  when the pairing happened.  Its presence means "paired".

Both are written atomically (a temporary file, fsync, rename, fsync of the
directory).  Re-pairing replaces both, and a crash must leave the old pair or
the new pair, never the key of one with the identity of the other (the
control plane would refuse that agent for good): the new key is written to
``agent.key.next``, then ``identity.json``, which names its key's public
half, is replaced (the commit point), then the key is renamed into place.
``load_private_key`` finishes a rotation cut short after the commit point
and discards one cut short before it.  The pairing token is stored nowhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import socket
import stat
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import __version__
from agent.errors import OperationError
from agent.hardening import forbid_core_dumps
from agent.protocol.signing import load_public_key, public_key_b64
from agent.store import files

log = logging.getLogger("flow_agent.identity")

IDENTITY_FILE: Final = "identity.json"
KEY_FILE: Final = "agent.key"
NEXT_KEY_FILE: Final = "agent.key.next"  # a new key whose identity is not committed yet
_FIELDS: Final = ("agent_id", "tenant", "region", "url", "signing_key", "paired_at", "name")


@dataclass(frozen=True, kw_only=True)
class Identity:
    """What the control plane gave this agent at pairing."""

    agent_id: str
    tenant: str
    region: str
    url: str  # the control plane's base URL; the only one the agent talks to
    signing_key: str  # base64 raw Ed25519 public key of the control plane
    paired_at: str  # ISO 8601
    name: str  # the host name sent at pairing
    public_key: str = ""  # base64 raw Ed25519 public half of agent.key ("" in older files)

    def cp_key(self) -> Ed25519PublicKey:
        return load_public_key(self.signing_key)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def host_facts() -> dict[str, Any]:
    """Facts sent at pairing and in ``auth``/``status``; nothing secret."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "agent_version": __version__,
        "python": platform.python_version(),
    }


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600 from the first byte.

    The temporary file is created with O_EXCL next to the target so the
    rename stays on one file system; fsync before the rename and of the
    directory after it make the new content survive a power loss.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, files.FILE_MODE)
        try:
            # The umask cannot widen 0600, but an odd one could narrow it.
            os.fchmod(fd, files.FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OperationError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="check that the state directory is writable by this user",
        ) from exc


def save_identity(state_dir: Path, identity: Identity, key: Ed25519PrivateKey) -> Identity:
    """Store the key and the identity (the commit point of a pairing); returns what was stored.

    Order: the new key beside the old one, the identity naming it, the key
    into place; see the module's docstring.
    """
    files.prepare_dir(state_dir)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    identity = replace(identity, public_key=public_key_b64(key))
    write_private_file(state_dir / NEXT_KEY_FILE, pem)
    text = json.dumps(identity.to_json(), indent=2, sort_keys=True) + "\n"
    write_private_file(state_dir / IDENTITY_FILE, text.encode("utf-8"))
    _install_next_key(state_dir)
    return identity


def _install_next_key(state_dir: Path) -> None:
    try:
        os.replace(state_dir / NEXT_KEY_FILE, state_dir / KEY_FILE)
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise OperationError(
            f"cannot install the new key {state_dir / KEY_FILE}: {exc.strerror or exc}",
            hint="check that the state directory is writable by this user",
        ) from exc


def _finish_rotation(state_dir: Path) -> None:
    """Install or drop an ``agent.key.next`` left by a re-pairing that was cut short."""
    path = state_dir / NEXT_KEY_FILE
    if not path.exists():
        return
    identity = load_identity(state_dir)
    try:
        candidate = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        candidate = None
    if (
        identity is not None
        and identity.public_key
        and isinstance(candidate, Ed25519PrivateKey)
        and public_key_b64(candidate) == identity.public_key
    ):
        log.warning("finishing a re-pairing that was interrupted: installing its key")
        _install_next_key(state_dir)
    else:
        log.warning("discarding the key of a re-pairing that was interrupted before it completed")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def load_identity(state_dir: Path) -> Identity | None:
    """The stored identity, or ``None`` when this state directory was never paired."""
    path = state_dir / IDENTITY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise OperationError(f"cannot read {path}: {exc}") from None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in _FIELDS):
            raise ValueError("a field is missing or not text")
        public_key = doc.get("public_key", "")
        if not isinstance(public_key, str):
            raise ValueError("public_key is not text")
        identity = Identity(**{k: doc[k] for k in _FIELDS}, public_key=public_key)
        identity.cp_key()
    except (ValueError, TypeError) as exc:
        raise OperationError(
            f"{path} is damaged ({exc})",
            hint="pair again with a new token: flow-agent pair TOKEN --force",
        ) from None
    return identity


def load_private_key(state_dir: Path) -> Ed25519PrivateKey:
    forbid_core_dumps()  # the key is about to be in this process's memory
    _finish_rotation(state_dir)
    path = state_dir / KEY_FILE
    try:
        st = path.stat()
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            # Loosened by hand: tighten it, and say so, since it may have been read.
            log.warning("%s was readable by others; its mode is now 0600", path)
            os.chmod(path, files.FILE_MODE)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise OperationError(
            f"{path} is missing: this agent has an identity but no key",
            hint="pair again with a new token: flow-agent pair TOKEN --force",
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise OperationError(
            f"cannot load the agent key {path}: {exc}",
            hint="pair again with a new token: flow-agent pair TOKEN --force",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise OperationError(f"{path} does not hold an Ed25519 private key")
    return key


__all__ = [
    "IDENTITY_FILE",
    "KEY_FILE",
    "NEXT_KEY_FILE",
    "Identity",
    "host_facts",
    "load_identity",
    "load_private_key",
    "save_identity",
    "write_private_file",
]
