"""What happens outside the handlers: requests aiohttp refuses before routing, bodies that never
arrive, clients that vanish mid-body, slow headers, and the request id (issue 14, items 6-7)."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from storage.base import Storage
from tests.api.conftest import MakeServed, Served
from tests.helpers import auth_headers, error_of

pytestmark = pytest.mark.asyncio

BOOKED = "/api/video-calls/end/" + "ab" * 12


async def raw_exchange(
    client: Served, data: bytes, *, read_timeout: float = 5.0, until_close: bool = True
) -> bytes:
    """Send raw bytes to the server; return what it answers until it closes (or, with
    `until_close=False`, the first response: headers and Content-Length bytes of body)."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(data)
        await writer.drain()
        if until_close:
            return await asyncio.wait_for(reader.read(), read_timeout)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), read_timeout)
        length = int(parse_response(head)[1].get("content-length", "0"))
        return head + await asyncio.wait_for(reader.readexactly(length), read_timeout)
    finally:
        writer.close()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_oversized_header_answers_with_the_envelope_and_logs_no_traceback(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    request = (
        b"GET /api/video-calls/config HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    )
    status, headers, body = parse_response(await raw_exchange(served, request))
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    envelope = json.loads(body)
    assert envelope["success"] is False
    assert envelope["error"]["code"] == "BAD_REQUEST"
    assert set(envelope["error"]) == {"code", "message", "details", "timestamp"}
    assert headers["server"] == "smiling-relay"
    assert headers["x-content-type-options"] == "nosniff"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    assert tracebacks(caplog) == []
    assert any("malformed request" in r.getMessage() for r in caplog.records)


async def test_garbage_request_line_answers_with_the_envelope(served: Served) -> None:
    status, _headers, body = parse_response(await raw_exchange(served, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400
    assert json.loads(body)["error"]["code"] == "BAD_REQUEST"


async def test_a_body_that_never_arrives_gets_408(
    make_served: MakeServed, booking_factory: object, storage: Storage
) -> None:
    served = await make_served(http_body_timeout=0.3)
    b = await booking_factory()  # type: ignore[operator]
    request = (
        f"POST /api/video-calls/end/{b.session.id} HTTP/1.1\r\nHost: x\r\n"
        f"x-auth-token: {b.psychologist_token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n{"
    ).encode()
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = await raw_exchange(served, request, until_close=False)
    status, headers, body = parse_response(raw)
    assert status == 408
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "REQUEST_TIMEOUT"
    assert error["details"] == {"timeoutSeconds": 0.3}
    assert loop.time() - started < 3  # answered after the timeout, not held open
    assert await storage.get_session(b.session.id) == b.session  # refused: nothing changed


async def test_slow_headers_are_cut_off(make_served: MakeServed) -> None:
    served = await make_served(header_timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = await raw_exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", read_timeout=10)
    assert raw == b""  # closed without an answer: the request never completed
    assert loop.time() - started < 5


async def test_client_abort_mid_body_is_no_server_error(
    served: Served, booking_factory: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    b = await booking_factory()  # type: ignore[operator]
    assert served.port is not None
    _reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(
        (
            f"POST /api/video-calls/end/{b.session.id} HTTP/1.1\r\nHost: x\r\n"
            f"x-auth-token: {b.psychologist_token}\r\nContent-Length: 1000\r\n\r\n{{"
        ).encode()
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    route = 'route="/api/video-calls/end/{sessionId}"'
    for _ in range(100):  # the request is counted once the server has given up on it
        metrics = await (await served.get("/metrics")).text()
        if route in metrics:
            break
        await asyncio.sleep(0.05)
    counted = [line for line in metrics.splitlines() if route in line and "_count" in line]
    assert counted, metrics
    assert all('status="499"' in line for line in counted), counted  # never a 500
    errors = [
        line for line in metrics.splitlines() if line.startswith("smiling_relay_errors_total")
    ]
    assert not any('source="api"' in line and not line.endswith(" 0.0") for line in errors), errors
    assert tracebacks(caplog) == []
    (access,) = [
        r for r in caplog.records if r.name == "smiling_relay.access" and "/end/" in r.getMessage()
    ]
    assert access.status == 499  # type: ignore[attr-defined]


async def test_request_id_is_accepted_or_made_and_returned(
    served: Served, admin_token: str
) -> None:
    given = await served.get("/healthz", headers={"X-Request-ID": "req-123.abc"})
    assert given.headers["X-Request-ID"] == "req-123.abc"
    made = await served.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    for insane in ("a" * 200, "x y", "id\u00e9", ""):
        resp = await served.get("/healthz", headers={"X-Request-ID": insane})
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])
    # errors carry it too
    refused = await served.get("/api/video-calls/config", headers={"X-Request-ID": "r-1"})
    await error_of(refused, 401)
    assert refused.headers["X-Request-ID"] == "r-1"
    ok = await served.get(
        "/api/video-calls/config", headers={**auth_headers(admin_token), "X-Request-ID": "r-2"}
    )
    assert ok.headers["X-Request-ID"] == "r-2"
