"""The `/ws` protocol: authentication, the join policy and bad input, against the real app."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from relay.sfu import Relay
from smiling_relay.app import RELAY_KEY
from storage.base import Storage
from tests.helpers import Booking, BookingFactory, TokenFactory
from tests.waiting import eventually

Client = TestClient[Any, Any]


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message: dict[str, Any] = await ws.receive_json(timeout=5)
    return message


async def open_room(storage: Storage, booking: Booking) -> str:
    room_id = f"room-{uuid.uuid4()}"
    await storage.set_meeting_link(booking.session.id, room_id)
    return room_id


@pytest.fixture
async def socket_for(client: Client) -> AsyncIterator[Any]:
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def connect(token: str | None) -> aiohttp.ClientWebSocketResponse:
        ws = await client.ws_connect("/ws" + (f"?token={token}" if token else ""))
        sockets.append(ws)
        if token:
            hello = await receive(ws)
            assert hello["event"] in ("authenticated", "error")
            if hello["event"] == "error":
                ws.hello = hello  # type: ignore[attr-defined]
        return ws

    yield connect
    for ws in sockets:
        await ws.close()


async def test_query_token_authenticates(socket_for: Any, booking_factory: BookingFactory) -> None:
    booking = await booking_factory()
    ws = await socket_for(None)
    await ws.send_json({"event": "authenticate", "data": {"token": booking.client_token}})
    hello = await receive(ws)
    assert hello["event"] == "authenticated"
    assert hello["data"]["userId"] == booking.client.id
    assert hello["data"]["role"] == "client"
    assert hello["data"]["protocolVersion"] == 1


@pytest.mark.parametrize("token", ["garbage", "a.b.c", ""])
async def test_bad_tokens_are_refused_and_closed(client: Client, token: str) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"event": "authenticate", "data": {"token": token}})
    refusal = await receive(ws)
    assert refusal["event"] == "error"
    assert refusal["data"]["code"] == "AUTHENTICATION_FAILED"
    closing = await ws.receive(timeout=5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 4401


async def test_expired_and_foreign_tokens_are_refused(
    client: Client, make_token: TokenFactory, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    expired = make_token(booking.client.id, "client", ttl=timedelta(seconds=-10))
    for token in (expired, booking.client_token[:-4] + "AAAA"):
        ws = await client.ws_connect(f"/ws?token={token}")
        refusal = await receive(ws)
        assert refusal["data"]["code"] == "AUTHENTICATION_FAILED"
        await ws.close()


async def test_message_before_authentication_is_refused(client: Client) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_json({"event": "join-room", "data": {"roomId": "room-x"}})
    refusal = await receive(ws)
    assert refusal["data"]["code"] == "AUTHENTICATION_FAILED"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "INVALID_MESSAGE"),
        ("[1, 2]", "INVALID_MESSAGE"),
        ('{"data": {}}', "INVALID_MESSAGE"),
        ('{"event": "join-room", "data": "x"}', "INVALID_MESSAGE"),
        ('{"event": "launch-missiles"}', "UNKNOWN_EVENT"),
        ('{"event": "join-room", "data": {}}', "VALIDATION_ERROR"),
        ('{"event": "join-room", "data": {"roomId": 5}}', "VALIDATION_ERROR"),
        ('{"event": "offer", "data": {"offer": {"type": "offer", "sdp": "v=0"}}}', "NOT_IN_ROOM"),
        ('{"event": "media-state", "data": {"audio": "yes"}}', "NOT_IN_ROOM"),
        ('{"event": "leave-room"}', "NOT_IN_ROOM"),
        ('{"event": "authenticate", "data": {"token": "x"}}', "VALIDATION_ERROR"),
    ],
)
async def test_bad_messages_get_an_error_and_the_socket_stays_usable(
    socket_for: Any, booking_factory: BookingFactory, frame: str, code: str
) -> None:
    booking = await booking_factory()
    ws = await socket_for(booking.client_token)
    await ws.send_str(frame)
    answer = await receive(ws)
    assert answer["event"] == "error"
    assert answer["data"]["code"] == code
    assert set(answer["data"]) == {"code", "message", "details"}
    await ws.send_json({"event": "ping"})
    assert (await receive(ws))["event"] == "pong"


async def test_join_policy_matches_can_join(
    socket_for: Any,
    booking_factory: BookingFactory,
    storage: Storage,
    make_token: TokenFactory,
) -> None:
    early = await booking_factory(starts_in=timedelta(hours=2))
    unpaid = await booking_factory(payment_status="Pending")
    ok = await booking_factory()
    cases = [
        (early, early.client_token, "TOO_EARLY"),
        (unpaid, unpaid.client_token, "PAYMENT_PENDING"),
        (ok, make_token("b" * 24, "client"), "PERMISSION_DENIED"),
    ]
    for booking, token, code in cases:
        room_id = await open_room(storage, booking)
        ws = await socket_for(token)
        await ws.send_json({"event": "join-room", "data": {"roomId": room_id}})
        refusal = await receive(ws)
        assert refusal["data"]["code"] == code, refusal
    ws = await socket_for(ok.client_token)
    await ws.send_json({"event": "join-room", "data": {"roomId": "room-that-does-not-exist"}})
    assert (await receive(ws))["data"]["code"] == "ROOM_NOT_FOUND"
    audit = await storage.list_audit(session_id=ok.session.id)
    assert any(e.action == "join_denied" and e.result == "denied" for e in audit)


async def test_join_ignores_claimed_identity_and_bad_sdp_leaves_nothing_behind(
    socket_for: Any, booking_factory: BookingFactory, storage: Storage, client: Client
) -> None:
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    ws = await socket_for(booking.client_token)
    await ws.send_json(
        {
            "event": "join-room",
            "data": {"roomId": room_id, "userId": "f" * 24, "userRole": "admin"},
        }
    )
    joined = await receive(ws)
    assert joined["event"] == "room-joined"
    relay: Relay = client.app[RELAY_KEY]
    participant = next(iter(relay.rooms[room_id].participants.values()))
    assert participant.info.user_id == booking.client.id
    assert participant.info.role == "client"

    await ws.send_json({"event": "join-room", "data": {"roomId": room_id}})
    assert (await receive(ws))["data"]["code"] == "ALREADY_IN_ROOM"
    await ws.send_json({"event": "offer", "data": {"offer": {"type": "offer", "sdp": "v=0\r\nx"}}})
    assert (await receive(ws))["data"]["code"] == "NEGOTIATION_FAILED"
    await ws.send_json({"event": "answer", "data": {"answer": {"type": "answer", "sdp": "v=0"}}})
    assert (await receive(ws))["data"]["code"] == "NEGOTIATION_FAILED"

    await ws.close()
    await eventually(lambda: room_id not in relay.rooms, "the abandoned room to close")


async def test_websocket_connections_are_rate_limited(
    aiohttp_client: Any, make_app: Any, booking_factory: BookingFactory
) -> None:
    client = await aiohttp_client(make_app(rate_limit_ws_per_min=3))
    booking = await booking_factory()
    codes = []
    for _ in range(4):
        ws = await client.ws_connect(f"/ws?token={booking.client_token}")
        codes.append((await receive(ws))["event"])
        await ws.close()
    assert codes == ["authenticated"] * 3 + ["error"]
