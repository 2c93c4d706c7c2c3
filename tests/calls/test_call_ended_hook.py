"""`CallService.on_call_ended`: every call that ends is told once (REST end or the server's),
with who ended it and the duration; an end that changes nothing tells nobody."""

from __future__ import annotations

from datetime import timedelta

from calls.identity import Identity
from calls.service import SERVER_ROLE, CallEnded, CallService
from tests.calls.test_stale_calls import REST, service, started_call
from tests.helpers import BookingFactory, FakeClock

__all__ = ["service"]  # the fixture, shared with the stale-call tests


def _recorder(service: CallService) -> list[CallEnded]:
    told: list[CallEnded] = []

    async def listener(ended: CallEnded) -> None:
        told.append(ended)

    service.on_call_ended(listener)
    return told


async def test_a_rest_end_is_told_once_with_who_and_how_long(
    service: CallService, booking_factory: BookingFactory, clock: FakeClock
) -> None:
    told = _recorder(service)
    session = await started_call(service, booking_factory)
    clock.advance(minutes=12)
    client = Identity(session.client_id, "client")
    await service.end(await service.authorize(client, session.id, REST), lambda: None)
    assert told == [
        CallEnded(
            session_id=session.id,
            room_id=session.meeting_link,
            ended_by_user_id=session.client_id,
            ended_by_role="client",
            duration_minutes=12,
        )
    ]
    again = await service.end(await service.authorize(client, session.id, REST), lambda: None)
    assert again.already_ended and len(told) == 1


async def test_the_server_ending_a_call_past_its_window_is_told(
    service: CallService, booking_factory: BookingFactory, clock: FakeClock
) -> None:
    told = _recorder(service)
    session = await started_call(service, booking_factory)
    assert session.meeting_link is not None
    clock.advance(timedelta(hours=2, minutes=6))
    await service.end_stale_calls({session.meeting_link}, idle_after=None)
    assert [(e.session_id, e.ended_by_user_id, e.ended_by_role) for e in told] == [
        (session.id, None, SERVER_ROLE)
    ]
    assert told[0].duration_minutes == 126


async def test_a_failing_listener_does_not_undo_the_end(
    service: CallService, booking_factory: BookingFactory, clock: FakeClock
) -> None:
    async def broken(ended: CallEnded) -> None:
        raise RuntimeError("the relay is gone")

    service.on_call_ended(broken)
    told = _recorder(service)
    session = await started_call(service, booking_factory)
    psychologist = Identity(session.psychologist_id, "psychologist")
    ended = await service.end(await service.authorize(psychologist, session.id, REST), lambda: None)
    assert not ended.already_ended and ended.session.status == "Completed"
    assert len(told) == 1  # the next listener is still told
