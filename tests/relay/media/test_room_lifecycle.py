"""Joining late, three participants, reloading, leaving, and churn without leaks."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import threading
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.sfu import Relay
from storage.base import Storage
from synth.client import CallClient, SignalingError
from synth.tracks import PatternVideoTrack
from tests.helpers import ADMIN_ID, Booking, BookingFactory
from tests.relay.helpers import connected_pair, join_and_publish, open_room, sees
from tests.relay.media.conftest import ClientMaker


async def test_three_participants_each_see_the_other_two(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    booking, room_id = booked_room
    client = await make_client(booking.client_token)
    psychologist = await make_client(booking.psychologist_token)
    admin = await make_client(booking.admin_token)
    for number, participant in enumerate((client, psychologist, admin), start=1):
        await join_and_publish(participant, room_id, source_id=number)

    sources = {client: 1, psychologist: 2, admin: 3}
    for viewer in sources:
        for publisher, source_id in sources.items():
            if publisher is not viewer:
                await sees(viewer, publisher, source_id)
    assert relay.active_participants() == 3
    assert relay.active_tracks() == 6


async def test_late_joiner_gets_a_keyframe_at_once(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    booking, room_id = booked_room
    early = await make_client(booking.client_token)
    await join_and_publish(early, room_id, source_id=1)
    producer = next(iter(relay.rooms[room_id].participants.values())).producers
    video = next(p for p in producer.values() if p.kind == "video")
    # let the publisher's encoder settle well past its first keyframe
    await early.wait_until(lambda: video.stats.frames >= 30, "30 published frames")
    requests_before = video.stats.keyframe_requests

    late = await make_client(booking.psychologist_token)
    await late.join(room_id)
    # Without the relay's keyframe request the late joiner would wait for the encoder's next
    # periodic keyframe (minutes with aiortc's VP8 encoder), far beyond `sees`' bounded wait;
    # how fast it is is the benchmark's figure, not asserted here.
    await sees(late, early, source_id=1, frames=1)
    assert video.stats.keyframe_requests > requests_before


async def test_reload_replaces_the_old_connection_without_renegotiating(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    booking, room_id = booked_room
    stayer, first = await connected_pair(
        make_client, room_id, booking.psychologist_token, booking.client_token
    )
    offers_before = sum(1 for m in stayer.history if m["event"] == "offer")
    mid_before = stayer.mid_of(first.socket_id or "", "video")

    mark = len(stayer.history)
    reloaded = await make_client(booking.client_token)  # same user, new page
    await join_and_publish(reloaded, room_id, source_id=3)

    replaced = await first.wait_for("error", lambda d: d["code"] == "REPLACED")
    assert replaced["data"]["details"]["reason"] == "replaced"
    await first.wait_until(lambda: first.closed_code is not None, "the old socket to close")
    assert first.closed_code == 4409
    left = await stayer.wait_for("user-left", after=mark)
    assert left["data"] == {
        "socketId": first.socket_id,
        "userId": booking.client.id,
        "reason": "replaced",
    }
    await stayer.wait_for("user-joined", lambda d: d["socketId"] == reloaded.socket_id, after=mark)
    await sees(stayer, reloaded, source_id=3)
    assert stayer.mid_of(reloaded.socket_id or "", "video") == mid_before
    assert sum(1 for m in stayer.history if m["event"] == "offer") == offers_before
    await sees(reloaded, stayer, source_id=1)
    assert relay.active_participants() == 2


async def test_leaving_frees_the_tracks_and_the_last_one_out_closes_the_room(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    relay.settings = dataclasses.replace(relay.settings, seat_grace=1.0)
    booking, room_id = booked_room
    stayer, leaver = await connected_pair(
        make_client, room_id, booking.client_token, booking.psychologist_token
    )

    mark = len(stayer.history)
    await leaver.leave()
    left = await stayer.wait_for("user-left", after=mark)
    assert left["data"]["reason"] == "left"
    tracks = await stayer.wait_for("tracks", after=mark)
    assert {t["socketId"] for t in tracks["data"]["tracks"]} == {None}
    assert relay.active_participants() == 1

    await stayer.close()  # a closed socket keeps its seat for the grace, then leaves
    await stayer.wait_until(lambda: room_id not in relay.rooms, "the room to close", timeout=30)


async def test_admin_observer_without_a_user_record_can_join(
    booked_room: tuple[Booking, str], make_client: ClientMaker
) -> None:
    booking, room_id = booked_room
    admin = await make_client(booking.admin_token)
    joined = await admin.join(room_id)
    assert joined["roomId"] == room_id
    client = await make_client(booking.client_token)
    await client.join(room_id)
    met = await admin.wait_for("user-joined")
    assert met["data"]["userRole"] == "client"
    assert met["data"]["userName"] == booking.client.name
    assert ADMIN_ID not in met["data"]["userId"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _own_threads() -> int:
    """Threads that belong to calls (decoders…), not the executors' pooled workers."""
    pooled = ("ThreadPoolExecutor", "asyncio_")
    return sum(1 for t in threading.enumerate() if not t.name.startswith(pooled))


async def test_churn_leaks_no_rooms_tasks_sockets_or_threads(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    relay.settings = dataclasses.replace(relay.settings, seat_grace=0.0)  # closed: gone at once
    booking, room_id = booked_room

    async def one_call() -> None:
        a, b = await connected_pair(
            make_client, room_id, booking.client_token, booking.psychologist_token
        )
        await a.close()
        await b.close()
        await a.wait_until(lambda: room_id not in relay.rooms, "the room to close", timeout=30)

    await one_call()  # warm-up: first-use allocations are not leaks
    await asyncio.sleep(0)
    baseline = (len(asyncio.all_tasks()), _open_fds(), _own_threads())
    for _ in range(6):
        await one_call()
    # aiortc/aioice tear down some tasks and sockets asynchronously: allow them to finish
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = (len(asyncio.all_tasks()), _open_fds(), _own_threads())
        if all(n <= b for n, b in zip(now, baseline, strict=True)):
            break
        await asyncio.sleep(0.2)
    tasks, fds, threads = len(asyncio.all_tasks()), _open_fds(), _own_threads()
    assert relay.rooms == {}
    assert tasks <= baseline[0], f"tasks grew from {baseline[0]} to {tasks}: " + ", ".join(
        sorted(repr(t.get_coro()) for t in asyncio.all_tasks())
    )
    assert fds <= baseline[1], f"open file descriptors grew from {baseline[1]} to {fds}"
    assert threads <= baseline[2], f"threads grew from {baseline[2]} to {threads}"


async def test_room_full_is_refused(
    aiohttp_server: object, make_app: object, booking_factory: BookingFactory, storage: Storage
) -> None:
    app: web.Application = make_app(room_max_participants=2)  # type: ignore[operator]
    server: TestServer = await aiohttp_server(app)  # type: ignore[operator]
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    clients = [
        CallClient(str(server.make_url("")), token)
        for token in (booking.client_token, booking.psychologist_token, booking.admin_token)
    ]
    try:
        for c in clients:
            await c.connect()
        await clients[0].join(room_id)
        await clients[1].join(room_id)
        with pytest.raises(SignalingError) as refused:
            await clients[2].join(room_id)
        assert refused.value.code == "ROOM_FULL"
    finally:
        for c in clients:
            await c.close()


def _local_udp_ports(client: CallClient) -> set[int]:
    ports = set()
    for pc in (client.publisher, client.subscriber):
        if pc is not None:
            for transceiver in pc.getTransceivers():
                gatherer = transceiver.sender.transport.transport.iceGatherer
                ports |= {c.port for c in gatherer.getLocalCandidates()}
    return ports


def _drop_udp_from(ports: set[int]) -> None:
    listed = ", ".join(str(p) for p in sorted(ports))
    rules = (
        "table inet silence {\n chain out {\n  type filter hook output priority 0; policy accept;\n"
        f"  udp sport {{ {listed} }} drop\n }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True)


async def test_a_client_that_falls_silent_is_dropped(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    relay.settings = dataclasses.replace(relay.settings, silence_timeout=2.0, seat_grace=0.0)
    booking, room_id = booked_room
    stayer, vanisher = await connected_pair(
        make_client, room_id, booking.client_token, booking.psychologist_token
    )

    # The tab's network dies but its WebSocket lingers: only the media tells the relay.
    _drop_udp_from(_local_udp_ports(vanisher))
    try:
        left = await stayer.wait_for("user-left", timeout=30)
        assert left["data"] == {
            "socketId": vanisher.socket_id,
            "userId": booking.psychologist.id,
            "reason": "timeout",
        }
        ended = await vanisher.wait_for("error", lambda d: d["details"].get("reason") == "timeout")
        assert ended["data"]["code"] == "CALL_ENDED"
        assert relay.stats.connection_failures["timeout"] >= 1
        assert relay.active_participants() == 1
    finally:
        subprocess.run(["nft", "delete", "table", "inet", "silence"], capture_output=True)  # noqa: ASYNC221


async def test_a_closed_socket_is_told_to_the_others_as_disconnected(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    """Without a seat grace (SEAT_GRACE_SECONDS=0); with one, see test_seat_grace.py."""
    relay.settings = dataclasses.replace(relay.settings, seat_grace=0.0)
    booking, room_id = booked_room
    stayer, leaver = await connected_pair(
        make_client, room_id, booking.client_token, booking.psychologist_token
    )
    mark = len(stayer.history)
    await leaver.close()  # the tab is closed: no leave-room, the socket just goes
    left = await stayer.wait_for("user-left", after=mark)
    assert left["data"] == {
        "socketId": leaver.socket_id,
        "userId": booking.psychologist.id,
        "reason": "disconnected",
    }
    assert relay.active_participants() == 1


async def test_a_media_connection_that_cannot_connect_is_told_as_ice_failed(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    """A client that offers no usable candidate (relay-only, without a TURN server: what a
    network blocking UDP leaves): the relay's ICE fails and the others get `ice-failed` (without
    a seat grace: with one they get `user-reconnecting`, test_seat_grace.py)."""
    relay.settings = dataclasses.replace(relay.settings, seat_grace=0.0)
    booking, room_id = booked_room
    stayer = await make_client(booking.client_token)
    await join_and_publish(stayer, room_id, source_id=1)
    failures_before = relay.stats.connection_failures["ice"]
    stranded = await make_client(booking.psychologist_token, relay_only=True)
    await stranded.join(room_id)
    mark = len(stayer.history)
    await stranded.publish(PatternVideoTrack(source_id=2))
    left = await stayer.wait_for("user-left", after=mark, timeout=30)
    assert left["data"] == {
        "socketId": stranded.socket_id,
        "userId": booking.psychologist.id,
        "reason": "ice-failed",
    }
    ended = await stranded.wait_for("error", lambda d: d["details"].get("reason") == "ice-failed")
    assert ended["data"]["code"] == "CONNECTION_FAILED"
    await stranded.wait_until(lambda: stranded.closed_code is not None, "the socket to close")
    assert stranded.closed_code == 4000
    assert relay.stats.connection_failures["ice"] == failures_before + 1
    assert relay.active_participants() == 1


async def test_reloading_alone_keeps_the_room_for_the_other_participant(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    booking, room_id = booked_room
    waiting = await make_client(booking.client_token)
    await join_and_publish(waiting, room_id, source_id=1)
    room = relay.rooms[room_id]

    reloaded = await make_client(booking.client_token)  # the client reloads while alone
    await join_and_publish(reloaded, room_id, source_id=3)
    await waiting.wait_for("error", lambda d: d["code"] == "REPLACED")
    assert relay.rooms.get(room_id) is room and not room.closed

    psychologist = await make_client(booking.psychologist_token)
    joined = await psychologist.join(room_id)
    assert [p["socketId"] for p in joined["participants"]] == [reloaded.socket_id]
    await sees(psychologist, reloaded, source_id=3)


@pytest.mark.timeout(120)  # aioice's consent checks need ~30 s to give a dead peer up
async def test_a_link_cut_after_connecting_is_told_as_ice_failed(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    """aiortc closes the relay's connections (state `closed`, not `failed`) when ICE consent
    lapses: that is a failure, told as `ice-failed` before any silence timeout would fire."""
    relay.settings = dataclasses.replace(relay.settings, silence_timeout=600.0, seat_grace=0.0)
    booking, room_id = booked_room
    stayer, vanisher = await connected_pair(
        make_client, room_id, booking.client_token, booking.psychologist_token
    )
    failures_before = relay.stats.connection_failures["ice"]
    mark = len(stayer.history)
    _drop_udp_from(_local_udp_ports(vanisher))
    try:
        left = await stayer.wait_for("user-left", after=mark, timeout=90)
        assert left["data"] == {
            "socketId": vanisher.socket_id,
            "userId": booking.psychologist.id,
            "reason": "ice-failed",
        }
        ended = await vanisher.wait_for(
            "error", lambda d: d["details"].get("reason") == "ice-failed"
        )
        assert ended["data"]["code"] == "CONNECTION_FAILED"
        assert relay.stats.connection_failures["ice"] == failures_before + 1
        assert relay.active_participants() == 1
    finally:
        subprocess.run(["nft", "delete", "table", "inet", "silence"], capture_output=True)  # noqa: ASYNC221
