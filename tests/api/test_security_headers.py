"""Browser security headers on every response (issue 14 item 9), static files, errors and the
WebSocket upgrade included; HSTS in production only; no Python/aiohttp version in `Server`."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.middleware import CONTENT_SECURITY_POLICY, HSTS
from tests.helpers import BookingFactory, auth_headers

Client = TestClient[web.Request, web.Application]


def _assert_hardened(headers: object) -> None:
    h = dict(headers)  # type: ignore[call-overload]
    csp = h["Content-Security-Policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert h["X-Frame-Options"] == "DENY"
    assert "camera=(self)" in h["Permissions-Policy"]
    assert "microphone=(self)" in h["Permissions-Policy"]
    assert "display-capture=(self)" in h["Permissions-Policy"]
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Server"] == "smiling-relay"


PATHS = ["/", "/call/0123456789abcdef01234567", "/static/js/main.js", "/healthz",
         "/api/video-calls/config", "/no-such-page"]  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
async def test_every_response_is_hardened(client: Client, admin_token: str, path: str) -> None:
    resp = await client.get(path, headers=auth_headers(admin_token))
    assert resp.status in (200, 404), resp.status
    _assert_hardened(resp.headers)
    assert "Strict-Transport-Security" not in resp.headers  # development: no HSTS


async def test_the_websocket_upgrade_is_hardened_too(
    client: Client, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    ws = await client.ws_connect(f"/ws?token={booking.client_token}")
    try:
        assert ws._response is not None
        _assert_hardened(ws._response.headers)
    finally:
        await ws.close()


async def test_production_adds_hsts(make_client: object, admin_token: str) -> None:
    client = await make_client(environment="production")  # type: ignore[operator]
    resp = await client.get("/healthz")
    assert resp.headers["Strict-Transport-Security"] == HSTS
    assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
