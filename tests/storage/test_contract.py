"""The storage contract: every backend must pass every test here."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from storage.base import (
    AuditEntry,
    DuplicateError,
    SessionRecord,
    Storage,
    UserRecord,
    is_object_id,
)
from tests.helpers import FakeClock


async def _pair(store: Storage) -> tuple[UserRecord, UserRecord]:
    client = await store.create_user(name="Jane Client", email="Jane@Example.test", role="client")
    psych = await store.create_user(
        name="Dr. Smith", email="smith@example.test", role="psychologist"
    )
    return client, psych


async def _session(
    store: Storage, when: datetime, *, status: str = "Confirmed", payment: str = "Paid"
) -> SessionRecord:
    client, psych = await _pair(store)
    return await store.create_session(
        client_id=client.id,
        psychologist_id=psych.id,
        session_date=when,
        status=status,
        payment_status=payment,
        session_type="Couples",
    )


async def test_ping(any_storage: Storage) -> None:
    assert await any_storage.ping() is True


async def test_users_roundtrip(any_storage: Storage) -> None:
    client, psych = await _pair(any_storage)
    assert is_object_id(client.id)
    assert client.email == "jane@example.test"  # stored lower-case
    assert client.created_at is not None
    assert client.created_at.tzinfo is not None
    assert await any_storage.get_user(client.id) == client
    users = await any_storage.get_users([client.id, psych.id, "f" * 24, "not-an-id"])
    assert users == {client.id: client, psych.id: psych}
    assert await any_storage.get_user("f" * 24) is None
    assert await any_storage.find_user_by_email("JANE@example.TEST") == client
    assert await any_storage.find_user_by_email("nobody@example.test") is None


async def test_duplicate_email_refused(any_storage: Storage) -> None:
    await any_storage.create_user(name="A", email="dup@example.test", role="client")
    with pytest.raises(DuplicateError):
        await any_storage.create_user(name="B", email="DUP@example.test", role="admin")


async def test_session_roundtrip(any_storage: Storage, clock: FakeClock) -> None:
    when = datetime(2025, 12, 15, 14, 0, 0, 123456, tzinfo=UTC)
    session = await _session(any_storage, when)
    assert is_object_id(session.id)
    assert session.session_date == datetime(2025, 12, 15, 14, 0, 0, 123000, tzinfo=UTC)
    assert session.status == "Confirmed"
    assert session.payment_status == "Paid"
    assert session.session_type == "Couples"
    assert session.is_video_call is True
    assert session.meeting_link is None
    assert session.video_call_started is None
    assert session.video_call_ended is None
    assert session.call_duration is None
    assert session.created_at == clock()
    assert await any_storage.get_session(session.id) == session
    assert await any_storage.get_session("0" * 24) is None
    assert await any_storage.get_session("nope") is None


async def test_meeting_link_first_writer_wins(any_storage: Storage, clock: FakeClock) -> None:
    session = await _session(any_storage, clock())
    first = await any_storage.set_meeting_link(session.id, "room-first")
    second = await any_storage.set_meeting_link(session.id, "room-second")
    assert first is not None
    assert second is not None
    assert first.meeting_link == second.meeting_link == "room-first"
    found = await any_storage.find_session_by_room("room-first")
    assert found is not None
    assert found.id == session.id
    assert await any_storage.find_session_by_room("room-second") is None
    assert await any_storage.set_meeting_link("0" * 24, "room-x") is None


async def test_concurrent_meeting_links_agree(any_storage: Storage, clock: FakeClock) -> None:
    session = await _session(any_storage, clock())
    results = await asyncio.gather(
        *(any_storage.set_meeting_link(session.id, f"room-{i}") for i in range(8))
    )
    links = {r.meeting_link for r in results if r is not None}
    assert len(links) == 1


async def test_mark_started_first_wins(any_storage: Storage, clock: FakeClock) -> None:
    session = await _session(any_storage, clock())
    t1 = clock()
    started = await any_storage.mark_started(session.id, t1)
    assert started is not None
    assert started.applied is True
    assert started.session.video_call_started == t1
    assert started.session.status == "In Progress"
    again = await any_storage.mark_started(session.id, t1 + timedelta(minutes=3))
    assert again is not None
    assert again.applied is False
    assert again.session.video_call_started == t1
    assert await any_storage.mark_started("0" * 24, t1) is None


async def test_concurrent_starts_agree(any_storage: Storage, clock: FakeClock) -> None:
    session = await _session(any_storage, clock())
    times = [clock() + timedelta(seconds=i) for i in range(6)]
    results = await asyncio.gather(*(any_storage.mark_started(session.id, t) for t in times))
    assert len({r.session.video_call_started for r in results if r is not None}) == 1
    assert sum(r.applied for r in results if r is not None) == 1


async def test_mark_ended(any_storage: Storage, clock: FakeClock) -> None:
    session = await _session(any_storage, clock())
    end = clock() + timedelta(minutes=45)
    not_started = await any_storage.mark_ended(session.id, end, 45)
    assert not_started is not None
    assert not_started.applied is False
    assert not_started.session.video_call_ended is None  # never started: untouched
    assert not_started.session.status == "Confirmed"
    await any_storage.mark_started(session.id, clock())
    ended = await any_storage.mark_ended(session.id, end, 45)
    assert ended is not None
    assert ended.applied is True
    record = ended.session
    assert (record.video_call_ended, record.call_duration, record.status) == (end, 45, "Completed")
    later = await any_storage.mark_ended(session.id, end + timedelta(minutes=5), 50)
    assert later is not None
    assert later.applied is False
    assert (later.session.video_call_ended, later.session.call_duration) == (end, 45)
    assert await any_storage.mark_ended("0" * 24, end, 1) is None


async def test_update_session(any_storage: Storage, clock: FakeClock) -> None:
    session = await _session(any_storage, clock(), status="Pending", payment="Pending")
    moved = clock() + timedelta(days=1)
    updated = await any_storage.update_session(
        session.id, status="Confirmed", payment_status="Verified", session_date=moved
    )
    assert updated is not None
    assert (updated.status, updated.payment_status, updated.session_date) == (
        "Confirmed",
        "Verified",
        moved,
    )
    only_status = await any_storage.update_session(session.id, status="Cancelled")
    assert only_status is not None
    assert (only_status.status, only_status.payment_status) == ("Cancelled", "Verified")
    assert await any_storage.update_session("0" * 24, status="Confirmed") is None


async def test_history(any_storage: Storage, clock: FakeClock) -> None:
    client, psych = await _pair(any_storage)
    other = await any_storage.create_user(name="Other", email="o@example.test", role="client")
    ids = []
    for i in range(5):
        s = await any_storage.create_session(
            client_id=client.id if i < 4 else other.id,
            psychologist_id=psych.id,
            session_date=clock() + timedelta(days=i),
            status="Confirmed",
            payment_status="Paid",
        )
        if i != 2:  # one session never had a call
            await any_storage.mark_started(s.id, clock() + timedelta(days=i))
        ids.append(s.id)

    mine = await any_storage.list_history(client.id, "client", page=1, limit=10)
    assert mine.total == 3
    assert [s.id for s in mine.sessions] == [ids[3], ids[1], ids[0]]  # newest call first

    theirs = await any_storage.list_history(psych.id, "psychologist", page=1, limit=2)
    assert theirs.total == 4
    assert [s.id for s in theirs.sessions] == [ids[4], ids[3]]
    page2 = await any_storage.list_history(psych.id, "psychologist", page=2, limit=2)
    assert [s.id for s in page2.sessions] == [ids[1], ids[0]]

    everyone = await any_storage.list_history("a" * 24, "admin", page=1, limit=10)
    assert everyone.total == 4
    nobody = await any_storage.list_history("b" * 24, "client")
    assert (nobody.total, nobody.sessions) == (0, [])


async def test_audit(any_storage: Storage, clock: FakeClock) -> None:
    session = await _session(any_storage, clock())
    base = clock()
    for i, action in enumerate(["join_attempt", "join_denied", "call_start"]):
        entry_id = await any_storage.add_audit(
            AuditEntry(
                action=action,
                result="denied" if action == "join_denied" else "allowed",
                timestamp=base + timedelta(seconds=i),
                session_id=session.id,
                user_id=session.client_id,
                role="client",
                reason="TOO_EARLY" if action == "join_denied" else None,
                ip_address="203.0.113.7",
                user_agent="pytest",
                metadata={"n": i, "nested": {"ok": True}},
            )
        )
        assert is_object_id(entry_id)
    await any_storage.add_audit(
        AuditEntry(action="permission_denied", result="denied", timestamp=base, user_id="b" * 24)
    )
    entries = await any_storage.list_audit(session_id=session.id)
    assert [e.action for e in entries] == ["call_start", "join_denied", "join_attempt"]
    denied = entries[1]
    assert (denied.result, denied.reason, denied.role) == ("denied", "TOO_EARLY", "client")
    assert (denied.ip_address, denied.user_agent) == ("203.0.113.7", "pytest")
    assert denied.timestamp == base + timedelta(seconds=1)
    assert denied.metadata == {"n": 1, "nested": {"ok": True}}
    by_user = await any_storage.list_audit(user_id="b" * 24)
    assert [e.action for e in by_user] == ["permission_denied"]
    assert by_user[0].session_id is None
    assert len(await any_storage.list_audit(limit=2)) == 2


async def test_call_metrics(any_storage: Storage, clock: FakeClock) -> None:
    day = datetime(2025, 12, 15, tzinfo=UTC)
    key = {"date": day, "period": "daily"}
    assert await any_storage.get_call_metrics(key) is None
    first = await any_storage.upsert_call_metrics(
        key, {"errorCounts": {"ICE_FAILED": 1}}, {"totalAttempts": 1}
    )
    assert first == {
        "date": day,
        "period": "daily",
        "errorCounts": {"ICE_FAILED": 1},
        "totalAttempts": 1,
    }
    second = await any_storage.upsert_call_metrics(
        key, {"averageDuration": 42.5}, {"totalAttempts": 2, "completedCalls": 1}
    )
    assert second["totalAttempts"] == 3
    assert second["completedCalls"] == 1
    assert second["averageDuration"] == 42.5
    assert second["errorCounts"] == {"ICE_FAILED": 1}
    assert await any_storage.get_call_metrics(key) == second
    await any_storage.upsert_call_metrics({"date": day, "period": "hourly"}, {"totalCalls": 7})
    await any_storage.upsert_call_metrics({"callId": "c1", "kind": "quality"}, {"rttMs": 12})
    daily = await any_storage.find_call_metrics({"period": "daily"})
    assert daily == [second]
    by_day = await any_storage.find_call_metrics({"date": day})
    assert sorted(d["period"] for d in by_day) == ["daily", "hourly"]
    assert await any_storage.get_call_metrics({"callId": "c1", "kind": "quality"}) == {
        "callId": "c1",
        "kind": "quality",
        "rttMs": 12,
    }
    with pytest.raises(ValueError, match="key"):
        await any_storage.upsert_call_metrics({}, {"x": 1})


async def test_call_metrics_compare_and_set(any_storage: Storage) -> None:
    """The transitions of a call summary: checkpoints create or refresh an in-progress
    document, a final or a recovery changes it once; a refused write changes nothing."""
    started = datetime(2025, 12, 15, 14, 0, 1, 234000, tzinfo=UTC)
    at = datetime(2025, 12, 15, 14, 0, 31, tzinfo=UTC)
    key = {"period": "call", "roomId": "room-cas", "startedAt": started}
    in_progress = {"status": ["in-progress"]}
    # no document and no insert: nothing is created
    assert await any_storage.set_call_metrics_if(key, {"x": 1}, where=in_progress) is None
    assert await any_storage.get_call_metrics(key) is None
    first = await any_storage.set_call_metrics_if(
        key, {"status": "in-progress", "checkpointAt": at}, where=in_progress, insert=True
    )
    assert first == {**key, "status": "in-progress", "checkpointAt": at}
    assert await any_storage.get_call_metrics(key) == first
    # the condition compares datetimes too (the recovery's compare-and-set on checkpointAt)
    stale: dict[str, list[object]] = {"status": ["in-progress"], "checkpointAt": [at]}
    cut = await any_storage.set_call_metrics_if(key, {"status": "cut-short"}, where=stale)
    assert cut == {**first, "status": "cut-short"}
    # the same transition a second time (another node's pass) is refused
    assert await any_storage.set_call_metrics_if(key, {"status": "cut-short"}, where=stale) is None
    # insert does not overwrite a document whose condition fails
    again = {"status": "in-progress", "checkpointAt": at, "y": 2}
    assert await any_storage.set_call_metrics_if(key, again, where=in_progress, insert=True) is None
    assert await any_storage.get_call_metrics(key) == cut
    # None stands for a missing field
    other = {"period": "call", "roomId": "room-old", "startedAt": started}
    await any_storage.upsert_call_metrics(other, {"endReason": "closed"})
    assert await any_storage.set_call_metrics_if(
        other, {"status": "complete"}, where={"status": [None]}
    ) == {**other, "endReason": "closed", "status": "complete"}
    assert await any_storage.find_call_metrics({"period": "call", "status": "complete"}) == [
        {**other, "endReason": "closed", "status": "complete"}
    ]
    with pytest.raises(ValueError, match="key"):
        await any_storage.set_call_metrics_if({}, {"x": 1}, where={})


async def test_list_open_calls(any_storage: Storage, clock: FakeClock) -> None:
    """Started, not ended calls, oldest start first (the stale-call check reads them)."""
    client, psych = await _pair(any_storage)
    sessions = [
        await any_storage.create_session(
            client_id=client.id,
            psychologist_id=psych.id,
            session_date=clock() + timedelta(hours=i),
            status="Confirmed",
            payment_status="Paid",
        )
        for i in range(4)
    ]
    never, later, ended, earlier = sessions
    await any_storage.mark_started(later.id, clock() + timedelta(minutes=5))
    await any_storage.mark_started(earlier.id, clock())
    await any_storage.mark_started(ended.id, clock())
    await any_storage.mark_ended(ended.id, clock() + timedelta(minutes=1), 1)
    assert [s.id for s in await any_storage.list_open_calls()] == [earlier.id, later.id]
    assert [s.id for s in await any_storage.list_open_calls(limit=1)] == [earlier.id]
    assert never.id not in {s.id for s in await any_storage.list_open_calls()}
