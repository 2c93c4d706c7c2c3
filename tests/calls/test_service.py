"""`CallService` on its own (no HTTP, no relay): each operation decides, audits itself and acts,
over the tests' SQLite storage and fake clock."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest

from calls.audit import Origin
from calls.errors import CallError, ErrorKind
from calls.identity import MALFORMED_TOKEN, AuthError, Identity
from calls.ratelimit import RateLimiter
from calls.service import CallService, RoomIsFull, Seat
from smiling_relay.config import Config
from storage.base import Storage
from tests.helpers import Booking, BookingFactory, FakeClock

REST = Origin(ip_address="10.0.0.7", user_agent="unit/1.0", endpoint="POST /x/{sessionId}")
WS = Origin(ip_address="10.0.0.8", user_agent=None, endpoint="WS join-room", socket_id="sock-1")


@pytest.fixture
def service(storage: Storage, config: Config) -> CallService:
    epoch = lambda: config.clock().timestamp()  # noqa: E731
    return CallService(
        storage,
        secret=config.jwt_secret,
        clock=config.clock,
        ws_limiter=RateLimiter(2, clock=epoch),
    )


def client_of(b: Booking) -> Identity:
    return Identity(b.client.id, "client")


async def audit_of(storage: Storage, b: Booking) -> list[tuple[str, str, str | None]]:
    entries = reversed(await storage.list_audit(session_id=b.session.id))
    return [(e.action, e.result, e.reason) for e in entries]


async def test_can_join_audits_the_attempt_with_its_origin(
    service: CallService, booking_factory: BookingFactory, storage: Storage, clock: FakeClock
) -> None:
    b = await booking_factory()
    access = await service.authorize(client_of(b), b.session.id.upper(), REST)
    assert access.session.id == b.session.id
    decision = await service.can_join(access)
    assert decision.can_join
    (entry,) = await storage.list_audit(session_id=b.session.id)
    assert (entry.action, entry.result, entry.user_id) == ("join_attempt", "allowed", b.client.id)
    assert (entry.ip_address, entry.user_agent, entry.timestamp) == (
        "10.0.0.7",
        "unit/1.0",
        clock(),
    )
    assert entry.metadata == {"endpoint": "POST /x/{sessionId}", "minutesUntilSession": 5}


async def test_a_refused_can_join_is_audited_as_denied(
    service: CallService, booking_factory: BookingFactory, storage: Storage
) -> None:
    b = await booking_factory(payment_status="Pending")
    decision = await service.can_join(await service.authorize(client_of(b), b.session.id, REST))
    assert (decision.can_join, decision.reason) == (False, "PAYMENT_PENDING")
    (entry,) = await storage.list_audit(session_id=b.session.id)
    assert (entry.action, entry.result, entry.error_code) == (
        "join_denied",
        "denied",
        "PAYMENT_PENDING",
    )


async def test_authorize_refusals_are_audited_before_they_are_raised(
    service: CallService, booking_factory: BookingFactory, storage: Storage
) -> None:
    b = await booking_factory()
    with pytest.raises(CallError) as unauthenticated:
        await service.authorize(
            AuthError(MALFORMED_TOKEN, "Token is not a JWT"), b.session.id, REST
        )
    assert unauthenticated.value.kind is ErrorKind.UNAUTHENTICATED
    assert unauthenticated.value.details == {"reason": MALFORMED_TOKEN}

    outsider = Identity("c" * 24, "client")
    with pytest.raises(CallError) as forbidden:
        await service.authorize(outsider, b.session.id, REST)
    assert (forbidden.value.kind, forbidden.value.code) == (ErrorKind.FORBIDDEN, "FORBIDDEN")

    with pytest.raises(CallError) as missing:
        await service.authorize(client_of(b), "f" * 24, REST)
    assert (missing.value.kind, missing.value.code) == (ErrorKind.NOT_FOUND, "SESSION_NOT_FOUND")

    assert await audit_of(storage, b) == [
        ("permission_denied", "denied", MALFORMED_TOKEN),
        ("permission_denied", "denied", "NOT_A_PARTICIPANT"),
    ]
    (lost,) = await storage.list_audit(user_id=b.client.id)
    assert (lost.action, lost.reason, lost.error_message) == (
        "join_denied",
        "SESSION_NOT_FOUND",
        "Session not found",
    )


async def test_a_malformed_id_is_kept_in_metadata(
    service: CallService, booking_factory: BookingFactory, storage: Storage
) -> None:
    b = await booking_factory()
    with pytest.raises(CallError) as invalid:
        await service.authorize(client_of(b), "xyz", REST)
    assert (invalid.value.kind, invalid.value.code) == (ErrorKind.INVALID, "INVALID_SESSION_ID")
    (entry,) = await storage.list_audit(user_id=b.client.id)
    assert entry.session_id is None
    assert entry.metadata == {"endpoint": "POST /x/{sessionId}", "rawSessionId": "xyz"}


async def test_start_then_end_first_one_wins(
    service: CallService, booking_factory: BookingFactory, storage: Storage, clock: FakeClock
) -> None:
    b = await booking_factory(starts_in=timedelta(minutes=-1))
    psychologist = Identity(b.psychologist.id, "psychologist")
    first = await service.start(await service.authorize(psychologist, b.session.id, REST))
    again = await service.start(await service.authorize(client_of(b), b.session.id, REST))
    assert (first.already_started, again.already_started) == (False, True)
    assert first.session.video_call_started == clock()

    clock.advance(minutes=30)
    asked: list[bool] = []

    def requested() -> None:
        asked.append(True)
        return None

    ended = await service.end(await service.authorize(psychologist, b.session.id, REST), requested)
    assert (ended.already_ended, ended.session.call_duration, asked) == (False, 30, [True])
    # An ended call ignores the request's end time: it is not even asked for.
    late = await service.end(await service.authorize(client_of(b), b.session.id, REST), requested)
    assert (late.already_ended, asked) == (True, [True])

    with pytest.raises(CallError) as restart:
        await service.start(await service.authorize(client_of(b), b.session.id, REST))
    assert (restart.value.kind, restart.value.code) == (ErrorKind.CONFLICT, "CALL_ALREADY_ENDED")
    assert [a for a, _, _ in await audit_of(storage, b)] == [
        "call_start",
        "call_start",
        "call_end",
        "call_end",
        "join_denied",
    ]


async def test_end_refuses_an_end_time_in_the_future(
    service: CallService, booking_factory: BookingFactory, clock: FakeClock
) -> None:
    b = await booking_factory()
    access = await service.authorize(client_of(b), b.session.id, REST)
    with pytest.raises(CallError) as not_started:
        await service.end(access, lambda: None)
    assert not_started.value.code == "CALL_NOT_STARTED"
    await service.start(access)
    access = await service.authorize(client_of(b), b.session.id, REST)
    with pytest.raises(CallError) as future:
        await service.end(access, lambda: clock() + timedelta(minutes=1))
    assert (future.value.kind, future.value.code) == (ErrorKind.INVALID, "INVALID_END_TIME")


async def test_join_room_seats_through_the_callback_and_audits(
    service: CallService, booking_factory: BookingFactory, storage: Storage
) -> None:
    b = await booking_factory()
    await storage.set_meeting_link(b.session.id, "room-unit")
    seats: list[Seat] = []

    async def seat(taker: Seat) -> str:
        seats.append(taker)
        return "seated"

    joined = await service.join_room(client_of(b), "room-unit", WS, seat)
    assert (joined.session_id, joined.seated) == (b.session.id, "seated")
    assert seats == [Seat(b.session.id, b.client.id, b.client.name, "client")]

    async def full(taker: Seat) -> str:
        raise RoomIsFull("room is full", 2)

    with pytest.raises(CallError) as refused:
        await service.join_room(client_of(b), "room-unit", WS, full)
    assert (refused.value.code, refused.value.details) == ("ROOM_FULL", {"maxParticipants": 2})

    entries = list(reversed(await storage.list_audit(session_id=b.session.id)))
    assert [(e.action, e.result, e.reason) for e in entries] == [
        ("join_success", "allowed", None),
        ("join_denied", "denied", "ROOM_FULL"),
    ]
    assert entries[0].room_id == "room-unit"
    assert entries[0].metadata == {"endpoint": "WS join-room", "socketId": "sock-1"}
    assert entries[1].error_message is None


async def test_join_room_refusals_never_call_the_seat(
    service: CallService, booking_factory: BookingFactory, storage: Storage
) -> None:
    b = await booking_factory(starts_in=timedelta(hours=1))
    await storage.set_meeting_link(b.session.id, "room-early")

    async def seat(taker: Seat) -> None:
        raise AssertionError("a refused caller must not be seated")

    with pytest.raises(CallError) as unknown:
        await service.join_room(client_of(b), "room-nope", WS, seat)
    assert (unknown.value.kind, unknown.value.code) == (ErrorKind.NOT_FOUND, "ROOM_NOT_FOUND")
    with pytest.raises(CallError) as early:
        await service.join_room(client_of(b), "room-early", WS, seat)
    assert early.value.code == "TOO_EARLY"
    assert early.value.details == {
        "reason": "TOO_EARLY",
        "sessionId": b.session.id,
        "minutesUntilSession": 60,
    }
    with pytest.raises(CallError) as outsider:
        await service.join_room(Identity("c" * 24, "client"), "room-early", WS, seat)
    assert outsider.value.code == "PERMISSION_DENIED"
    assert await audit_of(storage, b) == [
        ("join_denied", "denied", "TOO_EARLY"),
        ("join_denied", "denied", "PERMISSION_DENIED"),
    ]


async def test_connect_checks_the_token_then_the_per_user_budget(
    service: CallService, booking_factory: BookingFactory
) -> None:
    b = await booking_factory()
    assert await service.connect(b.client_token) == client_of(b)
    assert await service.connect(b.client_token) == client_of(b)
    with pytest.raises(CallError) as limited:
        await service.connect(b.client_token)
    assert limited.value.kind is ErrorKind.RATE_LIMITED
    assert limited.value.details == {"retryAfter": 60}
    assert (await service.connect(b.psychologist_token)).role == "psychologist"  # per user
    with pytest.raises(CallError) as bad:
        await service.connect("not-a-token")
    assert (bad.value.kind, bad.value.details) == (
        ErrorKind.UNAUTHENTICATED,
        {"reason": MALFORMED_TOKEN},
    )


def test_the_domain_loads_without_http_or_media() -> None:
    probe = (
        "import sys, calls.service, calls.audit, calls.policy, calls.ratelimit, "
        "calls.ice_servers, calls.identity; "
        "loaded = [m for m in ('aiohttp', 'aiortc', 'relay', 'api', 'signaling', 'metrics') "
        "if m in sys.modules]; print(loaded)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_call_ended_while_the_joiner_was_seating_refuses_the_join(
    service: CallService, booking_factory: BookingFactory, storage: Storage, clock: FakeClock
) -> None:
    """The race: the join passed the policy, then the call ended before its seat was taken
    (the relay closed the room; the seat would open a fresh one that nobody ends)."""
    b = await booking_factory(starts_in=timedelta(minutes=-1))
    await storage.set_meeting_link(b.session.id, "room-race")
    psychologist = Identity(b.psychologist.id, "psychologist")
    await service.start(await service.authorize(psychologist, b.session.id, REST))
    seated: list[Seat] = []

    async def seat_while_the_call_ends(taker: Seat) -> str:
        await service.end(await service.authorize(psychologist, b.session.id, REST), lambda: None)
        seated.append(taker)
        return "seated"

    with pytest.raises(CallError) as refused:
        await service.join_room(client_of(b), "room-race", WS, seat_while_the_call_ends)
    assert (refused.value.kind, refused.value.code) == (ErrorKind.FORBIDDEN, "SESSION_COMPLETED")
    assert len(seated) == 1  # the face was seated, and gives the seat back on this error
    assert (await audit_of(storage, b))[-1] == ("join_denied", "denied", "SESSION_COMPLETED")
