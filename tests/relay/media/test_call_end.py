"""Ending a call ends it for everyone: `call-ended`, the socket closed (4000), the relay's room
gone, the media stopped, and no way back in (REST end, and the server's stale-call end)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from api.keys import SERVICE_KEY
from relay.sfu import Relay
from relay.stats import StreamStats
from storage.base import Storage
from synth.client import CallClient, SignalingError
from tests.helpers import Booking, FakeClock, auth_headers, data_of
from tests.relay.helpers import connected_pair
from tests.relay.media.conftest import ClientMaker

CLOSE_ENDED = 4000
# How long the forwarded packet counters are watched after the end (media at ~30 fps would add
# dozens of packets in this time).
STILL_FOR = 1.5


def _forwarded(relay: Relay, room_id: str) -> list[StreamStats]:
    """The stats objects of every stream the relay forwards in this room (they outlive it)."""
    room = relay.rooms[room_id]
    return [slot.forwarder.stats for p in room.participants.values() for slot in p.slots]


def _packets(stats: list[StreamStats]) -> int:
    return sum(s.packets for s in stats)


async def _assert_told_and_closed(
    client: CallClient, room_id: str, booking: Booking, ended_by: Mapping[str, object], minutes: int
) -> None:
    message = await client.wait_for("call-ended", timeout=15)
    assert message["data"] == {
        "roomId": room_id,
        "sessionId": booking.session.id,
        "endedBy": ended_by,
        "durationMinutes": minutes,
    }
    await client.wait_until(lambda: client.closed_code is not None, "the socket to close")
    assert client.closed_code == CLOSE_ENDED
    # `call-ended` is the last message: no generic error after it
    assert client.history[-1]["event"] == "call-ended"


async def _media_stopped(relay: Relay, stats: list[StreamStats]) -> None:
    before = _packets(stats)
    await asyncio.sleep(STILL_FOR)  # an interval measured, not a condition waited for
    assert _packets(stats) == before


async def _live_call(
    make_client: ClientMaker,
    booking: Booking,
    room_id: str,
    relay: Relay,
    storage: Storage,
    started_at: datetime,
) -> tuple[CallClient, CallClient, list[StreamStats]]:
    """Both participants connected, the call recorded as started (as the start endpoint does)."""
    client, psychologist = await connected_pair(
        make_client, room_id, booking.client_token, booking.psychologist_token
    )
    await storage.mark_started(booking.session.id, started_at)
    return client, psychologist, _forwarded(relay, room_id)


async def _assert_ended_for_everyone(
    participants: tuple[CallClient, CallClient],
    relay: Relay,
    room_id: str,
    booking: Booking,
    who: dict[str, Any],
    minutes: int,
    stats: list[StreamStats],
) -> None:
    for participant in participants:
        await _assert_told_and_closed(participant, room_id, booking, who, minutes)
    assert room_id not in relay.rooms
    await _media_stopped(relay, stats)


async def test_ending_through_rest_ends_the_live_call_for_everyone(
    booked_room: tuple[Booking, str],
    make_client: ClientMaker,
    relay: Relay,
    server: TestServer,
    storage: Storage,
    clock: FakeClock,
) -> None:
    booking, room_id = booked_room
    # the call started 7 minutes ago
    client, psychologist, stats = await _live_call(
        make_client, booking, room_id, relay, storage, clock() - timedelta(minutes=7)
    )
    rising = _packets(stats)
    await client.wait_until(lambda: _packets(stats) > rising, "media to be forwarded")

    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            server.make_url(f"/api/video-calls/end/{booking.session.id}"),
            headers=auth_headers(booking.psychologist_token),
        )
        ended = await data_of(resp)
    assert ended["alreadyEnded"] is False and ended["duration"] == 7

    who = {"userId": booking.psychologist.id, "role": "psychologist"}
    await _assert_ended_for_everyone((client, psychologist), relay, room_id, booking, who, 7, stats)
    assert relay.active_participants() == 0

    # nobody gets back in: the session's call has ended
    again = await make_client(booking.client_token)
    with pytest.raises(SignalingError) as refused:
        await again.join(room_id)
    assert refused.value.code == "SESSION_COMPLETED"
    assert room_id not in relay.rooms


async def test_the_server_ends_an_occupied_call_past_its_window_the_same_way(
    booked_room: tuple[Booking, str],
    make_client: ClientMaker,
    relay: Relay,
    server: TestServer,
    storage: Storage,
    clock: FakeClock,
) -> None:
    booking, room_id = booked_room
    client, psychologist, stats = await _live_call(
        make_client, booking, room_id, relay, storage, clock()
    )
    clock.set(booking.session.session_date + timedelta(hours=2, minutes=1))
    occupied = {r for r, room in relay.rooms.items() if room.participants}
    assert room_id in occupied
    service = server.app[SERVICE_KEY]
    (ended,) = await service.end_stale_calls(occupied, idle_after=None)
    minutes = ended.session.call_duration
    assert minutes is not None and minutes > 100

    who = {"userId": None, "role": "server"}
    await _assert_ended_for_everyone(
        (client, psychologist), relay, room_id, booking, who, minutes, stats
    )
