"""What one client may hold of `/ws` (issue 14, items 6 and 9): unauthenticated upgrades per IP,
messages per second per connection, sessions per user, and the browser `Origin` check."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from signaling.setup import SIGNALING_KEY
from storage.base import Storage
from tests.conftest import MakeClient
from tests.helpers import BookingFactory, error_of
from tests.relay.helpers import open_room
from tests.signaling.helpers import Client, join, ping, receive
from tests.waiting import eventually

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def refused_upgrade(client: Client, status: int, **headers: str) -> dict[str, Any]:
    """Ask for an upgrade with a plain request, to read the refusal's envelope."""
    response = await client.get("/ws", headers={**UPGRADE, **headers})
    return await error_of(response, status)


async def test_unauthenticated_upgrades_per_address_are_limited(
    make_client: MakeClient, booking_factory: BookingFactory
) -> None:
    client = await make_client()  # default: 10 per address
    booking = await booking_factory()
    waiting = [await client.ws_connect("/ws") for _ in range(10)]
    error = await refused_upgrade(client, 429)
    assert error["code"] == "RATE_LIMITED"
    assert "unauthenticated" in error["message"]
    # a connection with `?token=` is authenticated at once: it never waits, it is not counted
    with_token = await client.ws_connect(f"/ws?token={booking.client_token}")
    assert (await receive(with_token))["event"] == "authenticated"
    # one of the waiting ones authenticates: its place is free again
    await waiting[0].send_json({"event": "authenticate", "data": {"token": booking.client_token}})
    assert (await receive(waiting[0]))["event"] == "authenticated"
    another = await client.ws_connect("/ws")
    await another.send_json({"event": "ping"})
    assert (await receive(another))["data"]["code"] == "AUTHENTICATION_FAILED"
    for ws in (*waiting, with_token, another):
        await ws.close()


async def test_a_message_flood_is_refused_and_not_relayed(
    make_client: MakeClient, booking_factory: BookingFactory, storage: Storage
) -> None:
    client = await make_client()  # defaults: 20 messages/s, bursts of 40
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    flooder = await join(client, booking.client_token, room_id)
    other = await join(client, booking.psychologist_token, room_id)
    assert (await receive(flooder))["event"] == "user-joined"
    for n in range(1500):
        toggle = n % 2 == 0
        await flooder.send_json({"event": "media-state", "data": {"audio": toggle}})
    codes: list[str] = []
    async for message in flooder:
        if message.type != aiohttp.WSMsgType.TEXT:
            break
        codes.append(message.json()["data"].get("code"))
    assert flooder.close_code == 1008  # over 20 refusals: disconnected
    assert codes and set(codes) == {"RATE_LIMITED"}
    relayed = 0
    while (event := (await receive(other))["event"]) != "user-left":
        assert event == "media-state"
        relayed += 1
    assert relayed <= 60, f"{relayed} media-state messages relayed out of 1500"
    await ping(other)
    await other.close()


async def test_media_state_is_relayed_only_when_it_changes(
    client: Client, booking_factory: BookingFactory, storage: Storage
) -> None:
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    a = await join(client, booking.client_token, room_id)
    b = await join(client, booking.psychologist_token, room_id)
    assert (await receive(a))["event"] == "user-joined"
    for _ in range(5):
        await a.send_json({"event": "media-state", "data": {"audio": True, "video": True}})
    await a.send_json({"event": "media-state", "data": {"audio": False, "video": True}})
    changed = await receive(b)
    assert changed["event"] == "media-state" and changed["data"]["audio"] is False, changed
    await ping(b)  # the five repeats of the state b already knew were not relayed
    for ws in (a, b):
        await ws.close()


async def test_sessions_per_user_are_capped(
    make_client: MakeClient, booking_factory: BookingFactory
) -> None:
    client = await make_client()  # default: 3 connections per user
    booking = await booking_factory()
    sockets = [await client.ws_connect(f"/ws?token={booking.client_token}") for _ in range(3)]
    for ws in sockets:
        assert (await receive(ws))["event"] == "authenticated"
    fourth = await client.ws_connect(f"/ws?token={booking.client_token}")
    refusal = await receive(fourth)
    assert refusal["data"]["code"] == "TOO_MANY_CONNECTIONS", refusal
    assert refusal["data"]["details"] == {"limit": 3}
    assert (await fourth.receive(timeout=5)).type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
    )
    assert fourth.close_code == 4429
    # another user is not affected
    psychologist = await client.ws_connect(f"/ws?token={booking.psychologist_token}")
    assert (await receive(psychologist))["event"] == "authenticated"
    await sockets[0].close()
    sessions = client.app[SIGNALING_KEY].sessions
    await eventually(lambda: sessions.held(booking.client.id) == 2, "the closed one's release")
    again = await client.ws_connect(f"/ws?token={booking.client_token}")
    assert (await receive(again))["event"] == "authenticated"
    for ws in (*sockets, fourth, psychologist, again):
        await ws.close()


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example", "http://[::1"]
)
async def test_a_foreign_browser_origin_is_refused_before_the_upgrade(
    make_client: MakeClient, origin: str
) -> None:
    client = await make_client(
        cors_origins=("https://app.example.org",), public_url="https://relay.example.org"
    )
    error = await refused_upgrade(client, 403, Origin=origin)
    assert error["code"] == "FORBIDDEN"
    assert "WebSocket" in error["message"]


async def test_own_listed_and_absent_origins_are_allowed(
    make_client: MakeClient, booking_factory: BookingFactory
) -> None:
    client = await make_client(
        cors_origins=("https://app.example.org",), public_url="https://relay.example.org/"
    )
    booking = await booking_factory()
    own = f"http://{client.host}:{client.port}"
    for headers in (
        {"Origin": own},
        {"Origin": "https://app.example.org"},
        {"Origin": "https://RELAY.example.org"},
        {},  # not a browser: aiortc, synth, scripts
    ):
        ws = await client.ws_connect(f"/ws?token={booking.client_token}", headers=headers)
        assert (await receive(ws))["event"] == "authenticated", headers
        await ws.close()
