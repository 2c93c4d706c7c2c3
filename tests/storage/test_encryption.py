"""Personal data encrypted at rest in SQLite (issue 14): names, emails, audit IPs and agents.

The raw file never holds them in clear; existing rows are encrypted at the first start with a key;
a key rotation rewrites every row under the new key; tampering fails loudly, never silently.
"""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smiling_relay.app import create_app
from smiling_relay.config import Config
from storage.base import AuditEntry, DuplicateError, StorageError
from storage.crypto import EncryptionKeyError, FieldCipher, parse_keys
from storage.sqlite import SQLiteStorage
from tests.helpers import FakeClock

KEY_1 = "k1:" + base64.b64encode(bytes(range(32))).decode()
KEY_2 = "k2:" + base64.urlsafe_b64encode(bytes(range(32, 64))).decode().rstrip("=")
SECRETS = ("Jane Doe", "jane@example.test", "203.0.113.7", "Firefox/153")


async def _open(path: Path, clock: FakeClock, keys: str | None) -> SQLiteStorage:
    store = SQLiteStorage(path, clock=clock, cipher=FieldCipher.from_text(keys) if keys else None)
    await store.initialize()
    return store


async def _write_personal_data(store: SQLiteStorage) -> str:
    user = await store.create_user(name="Jane Doe", email="Jane@Example.test", role="client")
    await store.add_audit(
        AuditEntry(
            action="join_attempt",
            result="allowed",
            timestamp=datetime(2026, 12, 1, tzinfo=UTC),
            user_id=user.id,
            ip_address="203.0.113.7",
            user_agent="Firefox/153",
        )
    )
    return user.id


def _raw(path: Path) -> str:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name, email FROM users").fetchall()
        rows += db.execute("SELECT ip_address, user_agent FROM audit_log").fetchall()
    return repr(rows)


async def _check_readable(store: SQLiteStorage, user_id: str) -> None:
    user = await store.get_user(user_id)
    assert user is not None and (user.name, user.email) == ("Jane Doe", "jane@example.test")
    found = await store.find_user_by_email(" JANE@example.TEST ")
    assert found is not None and found.id == user_id
    (entry,) = await store.list_audit(user_id=user_id)
    assert (entry.ip_address, entry.user_agent) == ("203.0.113.7", "Firefox/153")


async def test_personal_fields_are_never_stored_in_clear(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "relay.sqlite3"
    store = await _open(path, clock, KEY_1)
    try:
        user_id = await _write_personal_data(store)
        raw = _raw(path)
        assert not [s for s in (*SECRETS, "jane@example.test") if s in raw], raw
        assert raw.count("enc1:k1:") == 4
        await _check_readable(store, user_id)
        with pytest.raises(DuplicateError):  # uniqueness holds through the blind index
            await store.create_user(name="Other", email="JANE@example.test", role="client")
    finally:
        await store.close()


async def test_existing_rows_are_encrypted_at_the_first_start_with_a_key(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "relay.sqlite3"
    plain = await _open(path, clock, None)
    user_id = await _write_personal_data(plain)
    await plain.close()
    assert "Jane Doe" in _raw(path)

    store = await _open(path, clock, KEY_1)
    try:
        assert "Jane Doe" not in _raw(path) and _raw(path).count("enc1:k1:") == 4
        await _check_readable(store, user_id)
    finally:
        await store.close()


async def test_a_key_rotation_rewrites_every_row_under_the_new_key(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "relay.sqlite3"
    first = await _open(path, clock, KEY_1)
    user_id = await _write_personal_data(first)
    await first.close()

    rotated = await _open(path, clock, f"{KEY_2},{KEY_1}")  # new current key, old one still listed
    await rotated.close()
    assert _raw(path).count("enc1:k2:") == 4 and "enc1:k1:" not in _raw(path)

    only_new = await _open(path, clock, KEY_2)  # the old key can now be dropped
    try:
        await _check_readable(only_new, user_id)
    finally:
        await only_new.close()


async def test_encrypted_data_without_its_key_refuses_to_start(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "relay.sqlite3"
    store = await _open(path, clock, KEY_1)
    await _write_personal_data(store)
    await store.close()
    with pytest.raises(StorageError, match="DATA_ENCRYPTION_KEY"):
        await _open(path, clock, None)
    with pytest.raises(StorageError, match="no key with id 'k1'"):
        await _open(path, clock, KEY_2)


async def test_a_value_moved_to_another_column_fails_authentication(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "relay.sqlite3"
    store = await _open(path, clock, KEY_1)
    try:
        user_id = await _write_personal_data(store)
        with sqlite3.connect(path) as db:  # an attacker with the file swaps name and email
            db.execute("UPDATE users SET name = email, email = name")
        with pytest.raises(StorageError, match="failed authentication"):
            await store.get_user(user_id)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no key"),
        ("nokey", "<id>:<base64 key>"),
        ("k1:" + base64.b64encode(b"short").decode(), "must be 32 bytes"),
        (f"{KEY_1},{KEY_1}", "listed twice"),
        ("bad id:" + "A" * 44, "<id>:<base64 key>"),
    ],
)
def test_malformed_keys_are_refused_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(EncryptionKeyError, match=problem.replace("<", ".").replace(">", ".")):
        parse_keys(text)


def test_the_first_listed_key_is_current() -> None:
    current, keys = parse_keys(f" {KEY_2} , {KEY_1} ")
    assert current == "k2" and set(keys) == {"k1", "k2"}


async def test_the_app_encrypts_what_the_admin_api_writes(
    aiohttp_client: Any, admin_token: str, config: Config, tmp_path: Path
) -> None:
    """DATA_ENCRYPTION_KEY reaches the store the app opens itself (storage.factory)."""
    path = tmp_path / "app.sqlite3"
    app = create_app(dataclasses.replace(config, sqlite_path=str(path), data_encryption_key=KEY_1))
    client = await aiohttp_client(app)
    resp = await client.post(
        "/api/admin/users",
        headers={"x-auth-token": admin_token},
        json={"name": "Jane Doe", "email": "jane@example.test", "role": "client"},
    )
    assert resp.status == 201, await resp.text()
    user = (await resp.json())["data"]
    assert (user["name"], user["email"]) == ("Jane Doe", "jane@example.test")
    raw = _raw(path)
    assert "Jane Doe" not in raw and "jane@example.test" not in raw and "enc1:k1:" in raw
    await client.close()
