"""Stale calls end themselves: a started call whose room stayed empty for CALL_IDLE_END_MINUTES,
or that is past the 2-hour window, is ended by the server with its duration and a `call_end`
audit entry saying why (`CallService.end_stale_calls`, run every minute by the app)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from api.keys import SERVICE_KEY
from calls.audit import Origin
from calls.identity import Identity
from calls.service import ROOM_EMPTY, WINDOW_CLOSED, CallService, Ended
from smiling_relay import app as app_module
from storage.base import SessionRecord, Storage
from tests.helpers import BookingFactory, FakeClock, auth_headers, data_of

IDLE = timedelta(minutes=15)
REST = Origin(ip_address="10.0.0.7", user_agent="unit/1.0", endpoint="POST /x/{sessionId}")


@pytest.fixture
def service(storage: Storage, config: object) -> CallService:
    return CallService(storage, secret="s" * 40, clock=config.clock)  # type: ignore[attr-defined]


async def started_call(
    service: CallService, booking_factory: BookingFactory, **kwargs: object
) -> SessionRecord:
    b = await booking_factory(**kwargs)  # type: ignore[arg-type]
    access = await service.authorize(
        Identity(b.psychologist.id, "psychologist"), b.session.id, REST
    )
    room = await service.generate_room(access)
    access = await service.authorize(
        Identity(b.psychologist.id, "psychologist"), b.session.id, REST
    )
    started = await service.start(access)
    assert room.session.meeting_link
    return started.session


async def end_entries(storage: Storage, session_id: str) -> list[tuple[str | None, int | None]]:
    entries = await storage.list_audit(session_id=session_id)
    return [(e.reason, e.duration) for e in entries if e.action == "call_end"]


async def test_a_call_left_empty_ends_after_the_idle_time(
    service: CallService, booking_factory: BookingFactory, storage: Storage, clock: FakeClock
) -> None:
    session = await started_call(service, booking_factory)
    room = session.meeting_link
    assert room is not None
    clock.advance(minutes=20)
    assert await service.end_stale_calls({room}, idle_after=IDLE) == []  # occupied: kept
    clock.advance(minutes=10)
    assert await service.end_stale_calls(set(), idle_after=IDLE) == []  # first seen empty
    emptied_at = clock()
    clock.advance(minutes=14)
    assert await service.end_stale_calls(set(), idle_after=IDLE) == []  # empty 14 min: kept
    clock.advance(minutes=1)
    (ended,) = await service.end_stale_calls(set(), idle_after=IDLE)
    stored = await storage.get_session(session.id)
    assert stored is not None and stored == ended.session
    assert stored.status == "Completed"
    # ended when the room emptied, so the duration is the call's (30 min), not the check's
    assert stored.video_call_ended == emptied_at
    assert stored.call_duration == 30
    assert await end_entries(storage, session.id) == [(ROOM_EMPTY, 30)]
    (entry,) = [
        e for e in await storage.list_audit(session_id=session.id) if e.action == "call_end"
    ]
    assert entry.user_id is None and entry.metadata["endedBy"] == "server"
    # ended once: the next pass has nothing to do
    clock.advance(minutes=30)
    assert await service.end_stale_calls(set(), idle_after=IDLE) == []
    assert len(await end_entries(storage, session.id)) == 1


async def test_a_rejoin_resets_the_idle_time(
    service: CallService, booking_factory: BookingFactory, clock: FakeClock
) -> None:
    session = await started_call(service, booking_factory)
    room = session.meeting_link
    assert room is not None
    await service.end_stale_calls(set(), idle_after=IDLE)
    clock.advance(minutes=10)
    await service.end_stale_calls({room}, idle_after=IDLE)  # someone came back
    clock.advance(minutes=10)
    assert await service.end_stale_calls(set(), idle_after=IDLE) == []
    clock.advance(minutes=14)
    assert await service.end_stale_calls(set(), idle_after=IDLE) == []
    clock.advance(minutes=1)
    assert len(await service.end_stale_calls(set(), idle_after=IDLE)) == 1


async def test_a_call_past_the_window_ends_even_when_occupied(
    service: CallService, booking_factory: BookingFactory, storage: Storage, clock: FakeClock
) -> None:
    session = await started_call(service, booking_factory)  # starts in 5 minutes
    room = session.meeting_link
    assert room is not None
    clock.advance(hours=2, minutes=4)
    assert await service.end_stale_calls({room}, idle_after=None) == []
    clock.advance(minutes=2)  # 2 h 1 min after the session's start
    (ended,) = await service.end_stale_calls({room}, idle_after=None)
    assert ended.session.video_call_ended == clock()
    assert ended.session.call_duration == 126
    assert await end_entries(storage, session.id) == [(WINDOW_CLOSED, 126)]


async def test_a_call_ended_by_a_client_is_left_alone(
    service: CallService, booking_factory: BookingFactory, storage: Storage, clock: FakeClock
) -> None:
    session = await started_call(service, booking_factory)
    await service.end_stale_calls(set(), idle_after=IDLE)
    clock.advance(minutes=5)
    await storage.mark_ended(session.id, clock(), 5)  # the psychologist pressed "end"
    clock.advance(minutes=30)
    assert await service.end_stale_calls(set(), idle_after=IDLE) == []
    stored = await storage.get_session(session.id)
    assert stored is not None and stored.call_duration == 5
    assert await end_entries(storage, session.id) == []


async def test_the_running_app_ends_stale_calls(
    make_client: object,
    booking_factory: BookingFactory,
    storage: Storage,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app_module, "STALE_CALL_INTERVAL", 0.01)
    client = await make_client(call_idle_end_minutes=15)  # type: ignore[operator]
    service = client.app[SERVICE_KEY]
    passes: asyncio.Queue[list[Ended]] = asyncio.Queue()
    real_pass = service.end_stale_calls

    async def counted(*args: Any, **kwargs: Any) -> list[Ended]:
        result: list[Ended] = await real_pass(*args, **kwargs)
        passes.put_nowait(result)
        return result

    monkeypatch.setattr(service, "end_stale_calls", counted)
    b = await booking_factory()
    for step in ("generate-room", "start"):
        resp = await client.post(
            f"/api/video-calls/{step}/{b.session.id}", headers=auth_headers(b.psychologist_token)
        )
        await data_of(resp)

    async def next_pass() -> list[Ended]:
        """What the next two passes ended (the first may have begun before the clock moved;
        the second surely began after)."""
        while not passes.empty():
            passes.get_nowait()
        first = await asyncio.wait_for(passes.get(), 5)
        return first + await asyncio.wait_for(passes.get(), 5)

    assert await next_pass() == []  # the app saw the room empty (nobody joined)
    clock.advance(minutes=14)
    assert await next_pass() == []
    clock.advance(minutes=1, seconds=1)

    (ended,) = await next_pass()
    assert ended.session.id == b.session.id
    assert [r for r, _ in await end_entries(storage, b.session.id)] == [ROOM_EMPTY]
