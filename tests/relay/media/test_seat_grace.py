"""A participant whose connection goes away keeps its seat for SEAT_GRACE_SECONDS (issue 15):
the others are told `user-reconnecting`, never `user-left`, and the same user joining again
takes the seat back (`user-joined` with `previousSocketId`) and media resumes both ways; after
the grace, `user-left` with reason `timeout`. A reconnect to a seat is never refused by the
per-user connection budget; a flood still is."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from relay.sfu import Relay
from synth.client import CallClient, SignalingError
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.conftest import AppFactory
from tests.helpers import Booking
from tests.relay.helpers import connected_pair, join_and_publish, sees
from tests.relay.media.conftest import ClientMaker


def socket_is(socket_id: str | None) -> Callable[[dict[str, Any]], bool]:
    return lambda data: data.get("socketId") == socket_id


def events(client: CallClient, after: int = 0) -> list[str]:
    return [m["event"] for m in client.history[after:]]


async def test_a_dropped_participant_keeps_its_seat_and_takes_it_back(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    booking, room_id = booked_room
    stayer, dropper = await connected_pair(
        make_client, room_id, booking.client_token, booking.psychologist_token
    )
    mark = len(stayer.history)
    await dropper.close()  # the network took its socket: no leave-room

    reconnecting = await stayer.wait_for("user-reconnecting", after=mark)
    assert reconnecting["data"] == {
        "socketId": dropper.socket_id,
        "userId": booking.psychologist.id,
        "graceSeconds": relay.settings.seat_grace,
    }
    room = relay.rooms[room_id]
    assert booking.psychologist.id in room.held
    # the stayer's copy of the dropper's media is gone with it
    await stayer.wait_until(
        lambda: stayer.mid_of(dropper.socket_id or "", "video") is None, "the track to go"
    )

    back = await make_client(booking.psychologist_token)
    joined = await back.join(room_id)
    assert [p["socketId"] for p in joined["participants"]] == [stayer.socket_id]
    again = await stayer.wait_for("user-joined", after=mark)
    assert again["data"]["socketId"] == back.socket_id
    assert again["data"]["previousSocketId"] == dropper.socket_id
    await back.publish(PatternVideoTrack(source_id=3), ToneAudioTrack(source_id=3))
    await sees(stayer, back, source_id=3)
    await sees(back, stayer, source_id=1)
    assert "user-left" not in events(stayer, mark)
    assert not room.held and relay.rooms[room_id] is room
    assert relay.active_participants() == 2


async def test_a_held_seat_expires_as_user_left_timeout(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    relay.settings = dataclasses.replace(relay.settings, seat_grace=1.0)
    booking, room_id = booked_room
    stayer, dropper = await connected_pair(
        make_client, room_id, booking.client_token, booking.psychologist_token
    )
    mark = len(stayer.history)
    started = time.monotonic()
    await dropper.close()
    await stayer.wait_for("user-reconnecting", after=mark)
    left = await stayer.wait_for("user-left", after=mark, timeout=10)
    assert time.monotonic() - started >= 1.0
    assert left["data"] == {
        "socketId": dropper.socket_id,
        "userId": booking.psychologist.id,
        "reason": "timeout",
    }
    assert not relay.rooms[room_id].held


async def test_a_held_seat_counts_as_taken_for_others_only(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    relay.settings = dataclasses.replace(relay.settings, max_participants=2)
    booking, room_id = booked_room
    stayer, dropper = await connected_pair(
        make_client, room_id, booking.client_token, booking.psychologist_token
    )
    await dropper.close()
    await stayer.wait_for("user-reconnecting")
    outsider = await make_client(booking.admin_token)
    with pytest.raises(SignalingError) as refused:
        await outsider.join(room_id)
    assert refused.value.code == "ROOM_FULL"
    back = await make_client(booking.psychologist_token)
    await join_and_publish(back, room_id, source_id=3)
    await sees(stayer, back, source_id=3)


async def test_the_last_one_out_with_a_held_seat_keeps_the_call_open(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    """Both drop (one after the other): the room, hence the call record, stays one call."""
    booking, room_id = booked_room
    first, second = await connected_pair(
        make_client, room_id, booking.client_token, booking.psychologist_token
    )
    room = relay.rooms[room_id]
    opened = relay.stats.rooms_opened
    await second.close()
    await first.wait_for("user-reconnecting")
    await first.close()
    await first.wait_until(lambda: len(room.held) == 2, "both seats held", timeout=10)
    assert relay.rooms.get(room_id) is room and not room.closed
    back = await make_client(booking.client_token)
    await join_and_publish(back, room_id, source_id=3)
    assert relay.rooms[room_id] is room
    assert relay.stats.rooms_opened == opened


async def test_reconnects_over_the_connection_budget_rejoin_their_seat(
    make_app: AppFactory, booked_room: tuple[Booking, str]
) -> None:
    """RATE_LIMIT_WS_PER_MIN=3 and five reconnects within a minute: each one gets its seat back,
    while a user without a seat is still refused at its fourth connection."""
    app = make_app(rate_limit_ws_per_min=3)
    limited = TestServer(app)
    await limited.start_server()
    clients: list[CallClient] = []

    async def connect(token: str) -> CallClient:
        client = CallClient(str(limited.make_url("")), token)
        clients.append(client)
        await client.connect()
        return client

    try:
        booking, room_id = booked_room
        stayer = await connect(booking.client_token)
        await join_and_publish(stayer, room_id, source_id=1)
        current = await connect(booking.psychologist_token)
        await join_and_publish(current, room_id, source_id=2)
        await sees(stayer, current, source_id=2, frames=3)
        mark = len(stayer.history)
        for n in range(5):  # connections 2..6 of this user within the minute
            gone = current.socket_id
            await current.close()
            await stayer.wait_for("user-reconnecting", socket_is(gone), after=mark)
            current = await connect(booking.psychologist_token)
            await join_and_publish(current, room_id, source_id=10 + n)
        await sees(stayer, current, source_id=14, frames=3)
        await sees(current, stayer, source_id=1, frames=3)
        assert "user-left" not in events(stayer, mark)

        # The budget still stops a flood: the admin holds no seat, its 4th connection is refused.
        for _ in range(3):
            await (await connect(booking.admin_token)).close()
        with pytest.raises(SignalingError) as refused:
            await connect(booking.admin_token)
        assert refused.value.code == "RATE_LIMITED"
        # and after a proper leave the psychologist has no seat left to come back to
        await current.leave()
        await current.close()
        with pytest.raises(SignalingError) as refused:
            await connect(booking.psychologist_token)
        assert refused.value.code == "RATE_LIMITED"
    finally:
        for client in clients:
            await client.close()
        await limited.close()
