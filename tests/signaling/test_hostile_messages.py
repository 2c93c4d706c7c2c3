"""Hostile WebSocket messages found by the outside attack (issue 14): an `error` event
with INVALID_MESSAGE, the connection kept, instead of INTERNAL_ERROR and a traceback."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import BookingFactory

Client = TestClient[Any, Any]


@pytest.mark.parametrize(
    "text",
    [
        '{"event": "media-state", "data": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"event": "join-room", "data": {"roomId": "\\ud800"}}',
    ],
    ids=["deep-nesting", "lone-surrogate"],
)
async def test_a_hostile_message_is_refused_and_the_connection_kept(
    client: Client, booking_factory: BookingFactory, text: str
) -> None:
    booking = await booking_factory()
    ws = await client.ws_connect(f"/ws?token={booking.client_token}")
    try:
        assert (await ws.receive_json(timeout=5))["event"] == "authenticated"
        await ws.send_str(text)
        refusal = await ws.receive_json(timeout=5)
        assert refusal["event"] == "error", refusal
        assert refusal["data"]["code"] == "INVALID_MESSAGE", refusal
        await ws.send_json({"event": "ping", "data": {}})
        assert (await ws.receive_json(timeout=5))["event"] == "pong"
    finally:
        await ws.close()
