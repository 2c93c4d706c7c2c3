"""A weak link's signaling socket may stall for seconds while its media still flows: the relay's
keep-alive (signaling/liveness.py) keeps such a participant, where a socket-only heartbeat
(3 s + 1.5 s) dropped it, closing its media and cutting the call it was keeping going."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from relay.sfu import Relay
from smiling_relay.app import RELAY_KEY
from storage.base import Storage
from synth import netns
from synth.client import CallClient
from synth.impair import ClientNamespace, Impairment
from synth.threaded import ThreadedClient
from tests.helpers import BookingFactory
from tests.relay.helpers import join_and_publish, open_room, sees

STALL_SECONDS = 8.0  # well past the 4.5 s in which a silent socket without media is dropped


def stall_signaling(namespace: str, port: int) -> None:
    """Drop what the namespace sends to the relay's signaling port (its TCP): the relay hears
    nothing on the socket, while the client's UDP media goes on."""
    netns.nft(
        namespace,
        "table inet stall {\n chain out {\n  type filter hook output priority 0; policy accept;\n"
        f"  tcp dport {port} drop\n }}\n}}\n",
    )


@pytest.mark.timeout(180)
async def test_a_socket_that_stalls_while_the_media_flows_keeps_its_seat(
    make_app: Any, aiohttp_server: Any, storage: Storage, booking_factory: BookingFactory
) -> None:
    server: TestServer = await aiohttp_server(make_app(), host="0.0.0.0")
    relay: Relay = server.app[RELAY_KEY]
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    other = CallClient(f"http://127.0.0.1:{server.port}", booking.client_token)
    await other.connect()
    await join_and_publish(other, room_id, source_id=1)
    with ClientNamespace(Impairment()) as namespace:
        remote = ThreadedClient(namespace.name, name="stalled-client")
        remote.start()
        url = namespace.url_for_clients(f"http://127.0.0.1:{server.port}")

        async def joins() -> CallClient:
            client = CallClient(url, booking.psychologist_token)
            await client.connect()
            await join_and_publish(client, room_id, source_id=2)
            return client

        stalled = await remote.run(joins())
        try:
            await sees(other, stalled, source_id=2)
            await remote.run(sees(stalled, other, source_id=1))
            room = relay.rooms[room_id]
            seat = room.participants[stalled.socket_id or ""]
            mark = len(other.history)
            assert server.port is not None
            stall_signaling(namespace.name, server.port)
            try:
                # a measurement window, not a wait: the seat must hold all along
                for _ in range(round(STALL_SECONDS / 0.25)):
                    await asyncio.sleep(0.25)
                    assert room.participants.get(seat.socket_id) is seat, "dropped"
                    told = [m["event"] for m in other.history[mark:]]
                    assert "user-reconnecting" not in told, told
                # the media did flow meanwhile (what kept the seat): both ways
                await sees(other, stalled, source_id=2, frames=5)
                await remote.run(sees(stalled, other, source_id=1, frames=5))
            finally:
                netns.drop_table(namespace.name, "stall")
            # the socket itself is back (TCP's retransmissions get through): it is served
            reply = await remote.run(ping(stalled), timeout=40)
            assert reply["event"] == "pong"
            assert room.participants.get(seat.socket_id) is seat
        finally:
            await remote.run(stalled.close())
            remote.stop()
            await other.close()


async def ping(client: CallClient) -> dict[str, Any]:
    mark = len(client.history)
    await client.send("ping", {})
    return await client.wait_for("pong", after=mark, timeout=30)
