"""MongoDB specifics: the platform's collections, field names and indexes (via mongomock-motor)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from mongomock_motor import AsyncMongoMockClient

from smiling_relay.config import Config
from storage.base import AuditEntry
from storage.factory import open_storage
from storage.mongo import AUDIT_TTL_SECONDS, MongoStorage
from storage.sqlite import SQLiteStorage
from tests.helpers import TEST_JWT_SECRET, FakeClock


@pytest.fixture
async def mongo(clock: FakeClock) -> Any:
    db: Any = AsyncMongoMockClient()["smiling-steps"]
    store = MongoStorage(db, clock=clock)
    await store.initialize()
    return store, db


async def test_writes_platform_field_names(mongo: Any, clock: FakeClock) -> None:
    store, db = mongo
    client = await store.create_user(name="C", email="c@example.test", role="client")
    psych = await store.create_user(name="P", email="p@example.test", role="psychologist")
    session = await store.create_session(
        client_id=client.id,
        psychologist_id=psych.id,
        session_date=clock(),
        status="Confirmed",
        payment_status="Paid",
    )
    raw = await db["sessions"].find_one({"_id": ObjectId(session.id)})
    assert raw["client"] == ObjectId(client.id)
    assert raw["psychologist"] == ObjectId(psych.id)
    assert {"sessionDate", "status", "paymentStatus", "isVideoCall", "sessionType"} <= set(raw)
    assert "meetingLink" not in raw  # absent, not null: the unique sparse index counts nulls
    await store.set_meeting_link(session.id, "room-abc")
    await store.mark_started(session.id, clock())
    await store.mark_ended(session.id, clock() + timedelta(minutes=30), 30)
    raw = await db["sessions"].find_one({"_id": ObjectId(session.id)})
    assert raw["meetingLink"] == "room-abc"
    assert raw["callDuration"] == 30
    assert raw["status"] == "Completed"
    assert {"videoCallStarted", "videoCallEnded"} <= set(raw)

    await store.add_audit(
        AuditEntry(
            action="join_attempt",
            result="allowed",
            timestamp=clock(),
            session_id=session.id,
            user_id=client.id,
            role="client",
            ip_address="198.51.100.1",
        )
    )
    audit = await db["videocallauditlogs"].find_one({})
    assert audit["sessionId"] == ObjectId(session.id)
    assert audit["userId"] == ObjectId(client.id)
    assert audit["ipAddress"] == "198.51.100.1"
    assert audit["action"] == "join_attempt"


async def test_reads_existing_platform_documents(mongo: Any) -> None:
    """A booking written by the platform (its shapes, not ours) reads correctly."""
    store, db = mongo
    client_id, psych_id = ObjectId(), ObjectId()
    await db["users"].insert_many(
        [
            {
                "_id": client_id,
                "name": "Jane",
                "email": "jane@x.test",
                "role": "client",
                "password": "$2a$10$hash",
            },
            {"_id": psych_id, "name": "Dr. Smith", "email": "smith@x.test", "role": "psychologist"},
        ]
    )
    when = datetime(2025, 12, 15, 14, 0)  # naive, as some drivers hand back
    session_id = ObjectId()
    await db["sessions"].insert_one(
        {
            "_id": session_id,
            "client": client_id,
            "psychologist": {"_id": psych_id, "name": "Dr. Smith"},  # a populated reference
            "sessionType": "Individual",
            "sessionDate": when,
            "status": "Confirmed",
            "paymentStatus": "Verified",
            "meetingLink": None,
            "price": 2500,
        }
    )
    session = await store.get_session(str(session_id))
    assert session is not None
    assert session.client_id == str(client_id)
    assert session.psychologist_id == str(psych_id)
    assert session.session_date == when.replace(tzinfo=UTC)
    assert session.meeting_link is None
    assert session.is_video_call is True  # the platform's default
    linked = await store.set_meeting_link(str(session_id), "room-new")  # null counts as unset
    assert linked is not None
    assert linked.meeting_link == "room-new"
    users = await store.get_users([str(client_id), str(psych_id)])
    assert users[str(client_id)].name == "Jane"
    history = await store.list_history(str(client_id), "client")
    assert history.total == 0


async def test_indexes(mongo: Any) -> None:
    _, db = mongo
    sessions = await db["sessions"].index_information()
    keys = {tuple(k for k, _ in v["key"]): v for v in sessions.values()}
    assert keys[("meetingLink",)].get("unique") is True
    assert keys[("meetingLink",)].get("sparse") is True
    for wanted in [
        ("videoCallStarted",),
        ("client", "sessionDate"),
        ("psychologist", "sessionDate"),
        ("status", "sessionDate"),
    ]:
        assert wanted in keys
    audit = await db["videocallauditlogs"].index_information()
    audit_keys = {tuple(k for k, _ in v["key"]): v for v in audit.values()}
    assert audit_keys[("timestamp",)]["expireAfterSeconds"] == AUDIT_TTL_SECONDS
    for wanted in [("sessionId", "timestamp"), ("userId", "timestamp"), ("action", "timestamp")]:
        assert wanted in audit_keys


async def test_factory_picks_backend(tmp_path: Any) -> None:
    base = Config(jwt_secret=TEST_JWT_SECRET, sqlite_path=str(tmp_path / "x.sqlite3"))
    assert isinstance(open_storage(base), SQLiteStorage)
    mongo = Config(jwt_secret=TEST_JWT_SECRET, mongodb_uri="mongodb://127.0.0.1:1/platform")
    store = open_storage(mongo)
    assert isinstance(store, MongoStorage)
    assert store.sessions.database.name == "platform"
    await store.close()


async def test_a_conflicting_platform_index_is_left_alone_with_a_warning(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The platform's database may already hold `meetingLink_1` with other options: the relay
    keeps it (it is the platform's), says so, and creates the rest."""
    db: Any = AsyncMongoMockClient()["smiling-steps"]
    await db["sessions"].create_index([("meetingLink", 1)], name="meetingLink_1")  # not unique
    store = MongoStorage(db, clock=clock)
    with caplog.at_level(logging.WARNING, logger="storage.mongo"):
        await store.initialize()
    (existing,) = [
        v
        for v in (await db["sessions"].index_information()).values()
        if v["key"] == [("meetingLink", 1)]
    ]
    assert existing.get("unique") is not True and existing.get("sparse") is not True, existing
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "meetingLink" in warnings[0].getMessage() and "sessions" in warnings[0].getMessage()
    # the other indexes are there all the same, and the store works
    audit = await db["videocallauditlogs"].index_information()
    assert any(v.get("expireAfterSeconds") == AUDIT_TTL_SECONDS for v in audit.values())
    user = await store.create_user(name="C", email="c@example.test", role="client")
    assert (await store.get_user(user.id)) is not None
