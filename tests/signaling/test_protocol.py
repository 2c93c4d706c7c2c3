"""The `/ws` protocol: authentication, the join policy and bad input, against the real app."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
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
    relay: Relay = client.app[RELAY_KEY]
    relay.settings = dataclasses.replace(relay.settings, seat_grace=0.0)  # closed: gone at once
    ws = await socket_for(booking.client_token)
    await ws.send_json(
        {
            "event": "join-room",
            "data": {"roomId": room_id, "userId": "f" * 24, "userRole": "admin"},
        }
    )
    joined = await receive(ws)
    assert joined["event"] == "room-joined"
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


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Reads until the server's close frame; returns the close code."""
    for _ in range(50):
        message = await ws.receive(timeout=5)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code
    raise AssertionError("the server never closed the socket")


async def test_websocket_connections_are_rate_limited(
    aiohttp_client: Any, make_app: Any, booking_factory: BookingFactory
) -> None:
    """The upgrade succeeds; the 4th connection in a minute gets RATE_LIMITED and close 4429."""
    client = await aiohttp_client(make_app(rate_limit_ws_per_min=3))
    booking = await booking_factory()
    for _ in range(3):
        ws = await client.ws_connect(f"/ws?token={booking.client_token}")
        assert (await receive(ws))["event"] == "authenticated"
        await ws.close()
    ws = await client.ws_connect(f"/ws?token={booking.client_token}")
    refusal = await receive(ws)
    assert refusal["event"] == "error"
    assert refusal["data"]["code"] == "RATE_LIMITED", refusal
    assert await closed_with(ws) == 4429


async def test_a_frame_of_64_kib_closes_the_socket_with_1009(
    socket_for: Any, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    ws = await socket_for(booking.client_token)
    # one byte under 64 KiB is still a message: answered (INVALID_MESSAGE), the socket kept
    await ws.send_str("x" * (64 * 1024 - 1))
    assert (await receive(ws))["data"]["code"] == "INVALID_MESSAGE"
    await ws.send_json({"event": "ping"})
    assert (await receive(ws))["event"] == "pong"
    # 64 KiB is not read at all: aiohttp (max_msg_size) closes with 1009, message too big
    await ws.send_str("x" * (64 * 1024))
    assert await closed_with(ws) == 1009


async def test_a_binary_frame_is_refused_and_the_socket_kept(
    socket_for: Any, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    ws = await socket_for(booking.client_token)
    await ws.send_bytes(b'{"event": "ping"}')
    refusal = await receive(ws)
    assert refusal["event"] == "error"
    assert refusal["data"]["code"] == "INVALID_MESSAGE", refusal
    await ws.send_json({"event": "ping"})
    assert (await receive(ws))["event"] == "pong"


async def test_more_than_20_errors_close_the_socket_with_1008(
    socket_for: Any, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    ws = await socket_for(booking.client_token)
    for _ in range(20):
        await ws.send_str("not json")
        assert (await receive(ws))["data"]["code"] == "INVALID_MESSAGE"
    await ws.send_json({"event": "ping"})  # 20 errors: still served
    assert (await receive(ws))["event"] == "pong"
    await ws.send_str("not json")  # the 21st
    assert (await receive(ws))["data"]["code"] == "INVALID_MESSAGE"
    assert await closed_with(ws) == 1008


def test_the_authenticate_window_and_the_keep_alive_are_the_documented_10_s_3_s_and_1_5_s() -> None:
    from signaling import connection, liveness

    assert connection.AUTHENTICATE_TIMEOUT == 10.0
    assert (liveness.PING_AFTER, liveness.PONG_WAIT, liveness.STALE_AFTER) == (3.0, 1.5, 25.0)


async def test_no_authenticate_message_in_time_closes_with_4401(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 10 s window (shortened here: the rule, not the figure, is what is tested)."""
    from signaling import connection

    monkeypatch.setattr(connection, "AUTHENTICATE_TIMEOUT", 0.3)
    ws = await client.ws_connect("/ws")
    refusal = await receive(ws)  # sent without any message from us
    assert refusal["event"] == "error"
    assert refusal["data"]["code"] == "AUTHENTICATION_FAILED", refusal
    assert await closed_with(ws) == 4401


async def test_a_client_that_stops_answering_pings_is_dropped_as_disconnected(
    make_app: Any,
    aiohttp_client: Any,
    booking_factory: BookingFactory,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The heartbeat: the server pings; a client that answers stays, one that stops is dropped
    and the others are told `user-reconnecting` (its seat is held for SEAT_GRACE_SECONDS)."""
    from signaling import liveness

    monkeypatch.setattr(liveness, "PING_AFTER", 0.4)
    monkeypatch.setattr(liveness, "PONG_WAIT", 0.2)
    monkeypatch.setattr(liveness, "TICK", 0.05)
    client = await aiohttp_client(make_app())
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    stayer = await client.ws_connect(f"/ws?token={booking.client_token}")  # autoping answers
    silent = await client.ws_connect(f"/ws?token={booking.psychologist_token}", autoping=False)
    assert (await receive(stayer))["event"] == "authenticated"
    assert (await receive(silent))["event"] == "authenticated"
    await stayer.send_json({"event": "join-room", "data": {"roomId": room_id}})
    assert (await receive(stayer))["event"] == "room-joined"
    await silent.send_json({"event": "join-room", "data": {"roomId": room_id}})
    assert (await receive(silent))["event"] == "room-joined"
    assert (await receive(stayer))["event"] == "user-joined"
    # the stayer's client answers pings only while something reads its socket
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def read_stayer() -> None:
        async for message in stayer:
            inbox.put_nowait(json.loads(message.data))

    reader = asyncio.create_task(read_stayer())

    # three pings answered by hand: the server keeps the connection
    pings = 0
    while pings < 3:
        message = await silent.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.TEXT), message
        if message.type == aiohttp.WSMsgType.PING:
            pings += 1
            await silent.pong(message.data)
    # then silence: the server gives up on the pong and closes
    closed = False
    for _ in range(20):
        message = await silent.receive(timeout=5)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            closed = True
            break
    assert closed
    left = await asyncio.wait_for(inbox.get(), 5)
    assert left["event"] == "user-reconnecting", left
    assert left["data"]["userId"] == booking.psychologist.id
    await stayer.send_json({"event": "ping"})  # the one who answers is still served
    assert (await asyncio.wait_for(inbox.get(), 5))["event"] == "pong"
    await stayer.close()
    await reader


async def test_a_successful_join_is_audited(
    socket_for: Any, booking_factory: BookingFactory, storage: Storage
) -> None:
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    ws = await socket_for(booking.psychologist_token)
    await ws.send_json({"event": "join-room", "data": {"roomId": room_id}})
    assert (await receive(ws))["event"] == "room-joined"
    audit = await storage.list_audit(session_id=booking.session.id)
    joins = [e for e in audit if e.action == "join_success"]
    assert len(joins) == 1, audit
    entry = joins[0]
    assert (entry.user_id, entry.role, entry.result) == (
        booking.psychologist.id,
        "psychologist",
        "allowed",
    ), entry
    assert entry.room_id == room_id and entry.metadata["endpoint"] == "WS join-room", entry


async def test_an_internal_error_is_logged_with_its_traceback_and_the_socket_kept(
    socket_for: Any,
    booking_factory: BookingFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug while handling a message: the client gets INTERNAL_ERROR (no details), the log gets
    the traceback, the connection stays usable."""
    from signaling.connection import SignalingConnection

    async def broken(self: SignalingConnection, event: str, data: dict[str, Any]) -> None:
        raise RuntimeError("bug deep in the relay")

    monkeypatch.setattr(SignalingConnection, "_dispatch_media", broken)
    booking = await booking_factory()
    ws = await socket_for(booking.client_token)
    with caplog.at_level(logging.ERROR, logger="signaling.connection"):
        await ws.send_json({"event": "media-state", "data": {"audio": False}})
        refusal = await receive(ws)
    assert refusal["data"]["code"] == "INTERNAL_ERROR"
    assert "bug deep" not in json.dumps(refusal)
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert "Traceback" in caplog.text and "bug deep in the relay" in caplog.text
    await ws.send_json({"event": "ping"})
    assert (await receive(ws))["event"] == "pong"
