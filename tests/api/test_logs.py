"""Structured logs: JSON lines that parse, with the request, connection and call ids, and one
access line per request (method, canonical route, status, duration)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from calls.log_context import CALL_ID, CONNECTION_ID
from smiling_relay.logs import make_handler
from tests.api.conftest import Served
from tests.helpers import auth_headers
from tests.waiting import eventually


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log line of the test, as `LOG_FORMAT=json` writes it."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # each line parses


async def test_access_lines_carry_route_status_duration_and_request_id(
    served: Served, json_log: io.StringIO, booking_factory: Any
) -> None:
    b = await booking_factory()
    resp = await served.get(
        f"/api/video-calls/can-join/{b.session.id}",
        headers={**auth_headers(b.client_token), "X-Request-ID": "trace-42"},
    )
    assert resp.status == 200
    missing = await served.get("/no/such/path/" + "ab" * 12)
    assert missing.status == 404

    def access() -> list[dict[str, Any]]:
        return [x for x in lines(json_log) if x["logger"] == "smiling_relay.access"]

    await eventually(lambda: len(access()) >= 2, "two access lines")
    first, second = access()
    assert first["method"] == "GET"
    assert first["route"] == "/api/video-calls/can-join/{sessionId}"  # canonical: no ids
    assert b.session.id not in json.dumps(first)
    assert first["status"] == 200
    assert first["request_id"] == "trace-42"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    assert first["level"] == "INFO" and first["time"].endswith("+00:00")
    assert second["route"] == "unmatched" and second["status"] == 404
    assert second["request_id"] == missing.headers["X-Request-ID"]


async def test_lines_written_while_handling_a_request_carry_its_id(
    served: Served, json_log: io.StringIO, booking_factory: Any
) -> None:
    b = await booking_factory()
    assert served.port is not None
    _reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(
        (
            f"POST /api/video-calls/end/{b.session.id} HTTP/1.1\r\nHost: x\r\n"
            f"x-auth-token: {b.psychologist_token}\r\nX-Request-ID: rid-7\r\n"
            "Content-Length: 1000\r\n\r\n{"
        ).encode()
    )
    await writer.drain()
    writer.close()  # gone mid-body: the error middleware logs it inside the request

    def handler_lines() -> list[dict[str, Any]]:
        return [x for x in lines(json_log) if x["logger"] == "api.errors"]

    await eventually(lambda: bool(handler_lines()), "the error middleware's line")
    (line,) = handler_lines()
    assert line["request_id"] == "rid-7"
    assert line["level"] == "INFO"
    assert "client closed" in line["message"]


def test_relay_and_signaling_lines_carry_call_and_connection_ids(json_log: io.StringIO) -> None:
    # The relay knows no faces: it passes its call id with extra= (relay/room.py, relay/sfu.py).
    logging.getLogger("relay.room").warning(
        "RTCP for %s failed", "sock-1", extra={"call_id": "room-9", "connection_id": "sock-1"}
    )

    # The WebSocket face sets the ids in its connection's task (signaling/connection.py).
    async def connection_task() -> None:
        CONNECTION_ID.set("sock-2")
        CALL_ID.set("room-10")
        logging.getLogger("signaling.connection").info("a line of the connection")

    asyncio.run(connection_task())
    logging.getLogger("elsewhere").info("outside any connection")
    relay, signaling, outside = lines(json_log)
    assert (relay["call_id"], relay["connection_id"]) == ("room-9", "sock-1")
    assert (signaling["call_id"], signaling["connection_id"]) == ("room-10", "sock-2")
    assert "call_id" not in outside and "connection_id" not in outside


def test_text_format_appends_the_ids() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.text")
    logger.addHandler(make_handler("text", stream))
    logger.propagate = False
    try:
        logger.warning("hello", extra={"call_id": "room-1"})
        logger.warning("plain")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    first, second = stream.getvalue().splitlines()
    assert first.endswith("tests.text: hello [call_id=room-1]")
    assert second.endswith("tests.text: plain")


def test_exceptions_stay_inside_one_json_line(json_log: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("tests.exc").exception("failed")
    (line,) = lines(json_log)
    assert line["message"] == "failed"
    assert "ValueError: boom" in line["exception"]
