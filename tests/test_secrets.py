"""The secret store: AES-GCM at rest in the real state database, and sealed delivery."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import UsageError
from agent.secrets import (
    KEY_FILE,
    SEALING_KEY_FILE,
    SealedSecretInvalid,
    SecretKeyError,
    SecretStore,
    SecretsView,
    SecretUnreadable,
    load_sealing_key,
    open_sealed,
    public_key_text,
    seal,
)
from agent.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(tmp_path / "state", synchronous="off")
    yield s
    s.close()


@pytest.fixture
def secrets(store: SqliteStore) -> Iterator[SecretStore]:
    with SecretStore.for_store(store) as s:
        yield s


def _rows(path: Path) -> list[tuple[str, bytes, bytes]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT name, nonce, ciphertext FROM secrets ORDER BY name"))
    finally:
        conn.close()


def test_a_secret_round_trips_and_only_ciphertext_is_stored(
    secrets: SecretStore, store: SqliteStore
) -> None:
    secrets.set("erp-token", "s3cr3t-value")
    assert secrets.get("erp-token") == "s3cr3t-value"
    assert secrets.get("missing") is None
    [(name, nonce, ciphertext)] = _rows(store.path)
    assert name == "erp-token"
    assert len(nonce) == 12
    assert b"s3cr3t-value" not in ciphertext
    assert len(ciphertext) == len("s3cr3t-value") + 16  # the GCM tag


def test_the_key_file_is_created_once_private_and_reused(
    store: SqliteStore, secrets: SecretStore
) -> None:
    key_path = store.path.parent / KEY_FILE
    assert not key_path.exists()  # reading creates nothing
    assert secrets.get("x") is None
    secrets.set("a", "1")
    mode = stat.S_IMODE(key_path.stat().st_mode)
    assert mode == 0o600
    before = key_path.read_bytes()
    with SecretStore.for_store(store) as again:
        again.set("b", "2")
        assert again.get("a") == "1"
    assert key_path.read_bytes() == before


def test_replacing_a_secret_keeps_created_and_uses_a_fresh_nonce(
    secrets: SecretStore, store: SqliteStore
) -> None:
    secrets.set("pw", "one")
    [(_, nonce1, _)] = _rows(store.path)
    created = secrets.info()[0][1]
    secrets.set("pw", "two")
    [(_, nonce2, _)] = _rows(store.path)
    assert secrets.get("pw") == "two"
    assert nonce1 != nonce2
    assert secrets.info()[0][1] == created


def test_list_and_remove(secrets: SecretStore) -> None:
    secrets.set("b", "2")
    secrets.set("a", "1")
    assert secrets.names() == ["a", "b"]
    assert secrets.remove("a") is True
    assert secrets.remove("a") is False
    assert secrets.names() == ["b"]


def test_the_name_is_bound_a_row_copied_to_another_name_does_not_open(
    secrets: SecretStore, store: SqliteStore
) -> None:
    secrets.set("real", "value")
    conn = sqlite3.connect(store.path)
    conn.execute(
        "INSERT INTO secrets SELECT 'copy', nonce, ciphertext, created_at, updated_at "
        "FROM secrets WHERE name = 'real'"
    )
    conn.commit()
    conn.close()
    with pytest.raises(SecretUnreadable, match="'copy' does not decrypt"):
        secrets.get("copy")


def test_a_tampered_ciphertext_or_another_key_does_not_open(
    secrets: SecretStore, store: SqliteStore, tmp_path: Path
) -> None:
    secrets.set("pw", "value")
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    with (
        SecretStore.for_store(store, key_file=other) as wrong,
        pytest.raises(SecretUnreadable) as caught,
    ):
        wrong.get("pw")
    assert "value" not in str(caught.value)
    conn = sqlite3.connect(store.path)
    [(ct,)] = conn.execute("SELECT ciphertext FROM secrets")
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    conn.execute("UPDATE secrets SET ciphertext = ?", (flipped,))
    conn.commit()
    conn.close()
    with pytest.raises(SecretUnreadable):
        secrets.get("pw")


def test_a_supplied_key_file_raw_or_base64(store: SqliteStore, tmp_path: Path) -> None:
    key = os.urandom(32)
    raw = tmp_path / "raw.key"
    raw.write_bytes(key)
    text = tmp_path / "text.key"
    text.write_text(base64.b64encode(key).decode() + "\n")
    with SecretStore.for_store(store, key_file=raw) as a:
        a.set("pw", "v")
    with SecretStore.for_store(store, key_file=text) as b:
        assert b.get("pw") == "v"
    # A supplied key is never created in the state directory.
    assert not (store.path.parent / KEY_FILE).exists()


def test_a_missing_or_bad_supplied_key_file_is_a_clear_error(
    store: SqliteStore, tmp_path: Path
) -> None:
    with (
        SecretStore.for_store(store, key_file=tmp_path / "nope.key") as s,
        pytest.raises(SecretKeyError, match="does not exist"),
    ):
        s.set("pw", "v")
    short = tmp_path / "short.key"
    short.write_text("too short")
    with (
        SecretStore.for_store(store, key_file=short) as s,
        pytest.raises(SecretKeyError, match="not a key"),
    ):
        s.set("pw", "v")


def test_bad_names_and_values_are_refused(secrets: SecretStore) -> None:
    for name in ("", "-lead", "a b", "x" * 200, "../etc"):
        with pytest.raises(UsageError):
            secrets.set(name, "v")
    with pytest.raises(UsageError, match="64 KiB"):
        secrets.set("big", "x" * (64 * 1024 + 1))
    assert secrets.names() == []


def test_the_view_puts_overrides_over_the_store_and_hides_values_in_repr(
    secrets: SecretStore,
) -> None:
    secrets.set("a", "stored-a")
    secrets.set("b", "stored-b")
    view = SecretsView(secrets, {"b": "override-b", "c": "override-c"})
    assert view["a"] == "stored-a"
    assert view.get("b") == "override-b"
    assert view.get("missing") is None
    assert sorted(view) == ["a", "b", "c"]
    assert len(view) == 3
    assert "stored-" not in repr(view) and "override-" not in repr(view)
    # Set while a runner holds the view: the next read sees it.
    secrets.set("a", "rotated")
    assert view["a"] == "rotated"


# -- sealed delivery ----------------------------------------------------------------


def test_sealed_round_trip_and_the_format(tmp_path: Path) -> None:
    key = load_sealing_key(tmp_path)
    assert stat.S_IMODE((tmp_path / SEALING_KEY_FILE).stat().st_mode) == 0o600
    sealed = seal(public_key_text(key), agent_id="a_1", name="erp-token", value="v@lue")
    assert set(sealed) == {"v", "alg", "epk", "nonce", "ct"}
    assert "v@lue" not in json.dumps(sealed)
    assert open_sealed(key, sealed, agent_id="a_1") == ("erp-token", "v@lue")
    # As JSON text too, and with the key loaded again from its file.
    again = load_sealing_key(tmp_path, create=False)
    assert open_sealed(again, json.dumps(sealed), agent_id="a_1") == ("erp-token", "v@lue")
    # Every seal uses a fresh ephemeral key and nonce.
    other = seal(key.public_key(), agent_id="a_1", name="erp-token", value="v@lue")
    assert other["epk"] != sealed["epk"] and other["ct"] != sealed["ct"]


def _flip(text: str, index: int = 0) -> str:
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@pytest.mark.parametrize("field", ["ct", "epk", "nonce"])
def test_a_tampered_sealed_secret_does_not_open(field: str) -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(key.public_key(), agent_id="a_1", name="n", value="v")
    sealed[field] = _flip(sealed[field], 3)
    with pytest.raises(SealedSecretInvalid, match="does not open"):
        open_sealed(key, sealed, agent_id="a_1")


def test_a_secret_sealed_to_another_agent_or_key_does_not_open() -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(key.public_key(), agent_id="a_1", name="n", value="v")
    with pytest.raises(SealedSecretInvalid, match="another agent"):
        open_sealed(key, sealed, agent_id="a_2")
    with pytest.raises(SealedSecretInvalid, match="another agent"):
        open_sealed(X25519PrivateKey.generate(), sealed, agent_id="a_1")


@pytest.mark.parametrize(
    "sealed",
    [
        "not json",
        "[]",
        {"v": 2, "alg": "X25519-HKDF-SHA256-A256GCM", "epk": "", "nonce": "", "ct": ""},
        {"v": 1, "alg": "X25519-HKDF-SHA256-A256GCM", "epk": "AA", "nonce": "AA", "ct": "AA"},
        {"v": 1, "alg": "X25519-HKDF-SHA256-A256GCM"},
    ],
)
def test_malformed_sealed_secrets_are_refused(sealed: object) -> None:
    with pytest.raises(SealedSecretInvalid):
        open_sealed(X25519PrivateKey.generate(), sealed, agent_id="a_1")  # type: ignore[arg-type]


def test_put_sealed_stores_the_opened_secret(secrets: SecretStore, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    key = load_sealing_key(tmp_path / "keys")
    sealed = seal(public_key_text(key), agent_id="a_9", name="db-pw", value="hunter2")
    assert secrets.put_sealed(sealed, private_key=key, agent_id="a_9") == "db-pw"
    assert secrets.get("db-pw") == "hunter2"
