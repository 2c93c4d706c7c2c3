"""A relay that contacts none of the addresses its clients name still connects them (issue 14,
item 5): the clients' connectivity checks reveal their addresses to aioice (peer-reflexive
candidates), and the relay answers those. Here every candidate in the clients' SDP is a private
namespace address, and the relay's own, so the default policy drops them all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from relay._aiortc import selected_pair
from relay.candidates import Ignored
from relay.sfu import Relay
from smiling_relay.app import RELAY_KEY
from synth.client import CallClient
from tests.conftest import AppFactory
from tests.helpers import Booking
from tests.relay.helpers import connected_pair


async def test_a_call_connects_on_peer_reflexive_candidates_alone(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    make_app: AppFactory,
    booked_room: tuple[Booking, str],
) -> None:
    server = await aiohttp_server(make_app(relay_allowed_peer_ranges=()))
    relay: Relay = server.app[RELAY_KEY]
    booking, room_id = booked_room
    clients: list[CallClient] = []

    async def make_client(token: str) -> CallClient:
        client = CallClient(str(server.make_url("")), token)
        clients.append(client)
        await client.connect()
        return client

    try:
        await connected_pair(make_client, room_id, booking.client_token, booking.psychologist_token)
        participants = list(relay.rooms[room_id].participants.values())
        assert len(participants) == 2
        for participant in participants:
            assert participant.candidates_ignored[Ignored.ADDRESS] > 0
            for pc in (participant._publisher_pc, participant._subscriber_pc):
                assert pc is not None
                pair = selected_pair(pc)
                assert pair is not None
                assert pair.remote_type == "prflx", pair
    finally:
        for client in clients:
            await client.close()
