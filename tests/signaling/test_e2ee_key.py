"""`e2ee-key`: the browsers' key exchange, validated and forwarded verbatim to the room's others.

The server relays public keys and wrapped sender secrets it cannot read (docs/e2ee.md); it
stamps who sent them, refuses malformed ones, and never echoes them to the sender.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from signaling.protocol import ProtocolError, e2ee_key
from storage.base import Storage
from tests.helpers import BookingFactory

Client = TestClient[Any, Any]
KEY = "BExampleUncompressedP256PublicKeyInBase64url"
GOOD = {"capable": True, "publicKey": KEY, "keyId": 3, "wrapped": {"sock-1": "d3JhcHBlZA"}}


def test_a_capable_announcement_keeps_exactly_the_forwarded_fields() -> None:
    assert e2ee_key({**GOOD, "extra": "dropped"}) == GOOD
    assert e2ee_key({"capable": False, "publicKey": KEY}) == {"capable": False}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "capable"),
        ({**GOOD, "capable": "yes"}, "capable"),
        ({**GOOD, "publicKey": ""}, "publicKey"),
        ({**GOOD, "publicKey": "k" * 201}, "publicKey"),
        ({**GOOD, "keyId": 256}, "keyId"),
        ({**GOOD, "keyId": True}, "keyId"),
        ({**GOOD, "wrapped": []}, "wrapped"),
        ({**GOOD, "wrapped": {f"s{i}": "x" for i in range(17)}}, "wrapped"),
        ({**GOOD, "wrapped": {"s": 5}}, "wrapped"),
        ({**GOOD, "wrapped": {"s": ""}}, "wrapped"),
    ],
)
def test_malformed_announcements_are_refused_naming_the_field(
    data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ProtocolError) as refused:
        e2ee_key(data)
    assert refused.value.code == "VALIDATION_ERROR"
    assert refused.value.details["field"] == field


async def _joined(client: Client, token: str, room_id: str) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect(f"/ws?token={token}")
    assert (await ws.receive_json(timeout=5))["event"] == "authenticated"
    await ws.send_json({"event": "join-room", "data": {"roomId": room_id}})
    assert (await ws.receive_json(timeout=5))["event"] == "room-joined"
    return ws


async def _next(ws: aiohttp.ClientWebSocketResponse, event: str) -> dict[str, Any]:
    for _ in range(20):  # skip user-joined, tracks, offers: bounded
        message: dict[str, Any] = await ws.receive_json(timeout=5)
        if message["event"] == event:
            return message
    raise AssertionError(f"no {event} event")


async def test_keys_reach_the_others_stamped_with_the_sender_and_never_echo(
    client: Client, booking_factory: BookingFactory, storage: Storage
) -> None:
    booking = await booking_factory()
    room_id = f"room-{uuid.uuid4()}"
    await storage.set_meeting_link(booking.session.id, room_id)
    alice = await _joined(client, booking.client_token, room_id)
    bob = await _joined(client, booking.psychologist_token, room_id)
    try:
        await alice.send_json({"event": "e2ee-key", "data": GOOD})
        forwarded = (await _next(bob, "e2ee-key"))["data"]
        assert forwarded["publicKey"] == KEY and forwarded["wrapped"] == GOOD["wrapped"]
        assert forwarded["userId"] == booking.client.id and forwarded["socketId"]
        # a malformed one is refused to its sender and reaches nobody
        await alice.send_json({"event": "e2ee-key", "data": {**GOOD, "keyId": -1}})
        refusal = await _next(alice, "error")
        assert refusal["data"]["code"] == "VALIDATION_ERROR", refusal
        await bob.send_json({"event": "e2ee-key", "data": {"capable": False}})
        assert (await _next(alice, "e2ee-key"))["data"]["capable"] is False
        await alice.send_json({"event": "ping", "data": {}})
        assert (await _next(alice, "pong"))["event"] == "pong"  # nothing of its own came back
    finally:
        await alice.close()
        await bob.close()


async def test_outside_a_room_a_key_goes_nowhere(
    client: Client, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    ws = await client.ws_connect(f"/ws?token={booking.client_token}")
    try:
        assert (await ws.receive_json(timeout=5))["event"] == "authenticated"
        await ws.send_json({"event": "e2ee-key", "data": GOOD})
        refusal = await ws.receive_json(timeout=5)
        assert refusal["event"] == "error" and refusal["data"]["code"] == "NOT_IN_ROOM", refusal
    finally:
        await ws.close()
