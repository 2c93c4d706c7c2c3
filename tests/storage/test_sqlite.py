"""SQLite specifics: WAL, schema versioning, durability across restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage.base import AuditEntry, StorageError
from storage.sqlite import SCHEMA_VERSION, SQLiteStorage
from tests.helpers import FakeClock


async def test_wal_and_schema_version(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "db" / "relay.sqlite3"  # parent folder is created on demand
    store = SQLiteStorage(path, clock=clock)
    await store.initialize()
    assert await store.schema_version() == SCHEMA_VERSION
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_data_survives_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "relay.sqlite3"
    first = SQLiteStorage(path, clock=clock)
    await first.initialize()
    user = await first.create_user(name="C", email="c@example.test", role="client")
    psych = await first.create_user(name="P", email="p@example.test", role="psychologist")
    session = await first.create_session(
        client_id=user.id,
        psychologist_id=psych.id,
        session_date=clock(),
        status="Confirmed",
        payment_status="Paid",
    )
    await first.set_meeting_link(session.id, "room-keep")
    await first.mark_started(session.id, clock())
    await first.close()

    second = SQLiteStorage(path, clock=clock)
    await second.initialize()  # re-running migrations is a no-op
    try:
        again = await second.get_session(session.id)
        assert again is not None
        assert again.meeting_link == "room-keep"
        assert again.video_call_started == clock()
        assert await second.get_user(user.id) == user
    finally:
        await second.close()


async def test_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
        conn.execute("INSERT INTO schema_version VALUES (?, 'future')", (SCHEMA_VERSION + 1,))
    store = SQLiteStorage(path)
    with pytest.raises(StorageError, match="newer"):
        await store.initialize()


async def test_use_before_initialize_is_an_error() -> None:
    store = SQLiteStorage(":memory:")
    with pytest.raises(StorageError, match="not initialized"):
        await store.get_user("a" * 24)


async def test_old_audit_entries_are_pruned_on_start(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "relay.sqlite3"
    store = SQLiteStorage(path, clock=clock)
    await store.initialize()
    await store.add_audit(AuditEntry(action="join_attempt", result="allowed", timestamp=clock()))
    await store.close()
    clock.advance(days=200)  # past the platform's six-month retention
    store = SQLiteStorage(path, clock=clock)
    await store.initialize()
    try:
        assert await store.list_audit() == []
    finally:
        await store.close()


async def test_a_running_store_prunes_only_what_is_past_retention(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = SQLiteStorage(tmp_path / "relay.sqlite3", clock=clock)
    await store.initialize()
    try:
        await store.add_audit(AuditEntry(action="old", result="allowed", timestamp=clock()))
        clock.advance(days=100)
        await store.add_audit(AuditEntry(action="recent", result="allowed", timestamp=clock()))
        clock.advance(days=100)  # the first is now 200 days old, the second 100
        assert await store.prune_expired() == 1
        assert [e.action for e in await store.list_audit()] == ["recent"]
        assert await store.prune_expired() == 0
    finally:
        await store.close()


async def test_unwritable_path_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SQLiteStorage(blocker / "relay.sqlite3")
    with pytest.raises((StorageError, OSError)):
        await store.initialize()
