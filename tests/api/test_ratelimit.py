"""Rate limits: 10 requests/min/user on the video-call API, 3 WebSocket connections/min/user."""

from __future__ import annotations

import math

from aiohttp import web
from aiohttp.test_utils import TestClient

from api.keys import API_RATE_LIMITER_KEY, SERVICE_KEY
from tests.conftest import MakeClient
from tests.helpers import FakeClock, TokenFactory, auth_headers, error_of

Client = TestClient[web.Request, web.Application]


async def test_api_limit_returns_429_with_headers(
    make_client: MakeClient, make_token: TokenFactory, clock: FakeClock
) -> None:
    client = await make_client(rate_limit_api_per_min=10)
    alice = auth_headers(make_token("1" * 24, "client"))
    for i in range(10):
        resp = await client.get("/api/video-calls/config", headers=alice)
        assert resp.status == 200
        assert resp.headers["X-RateLimit-Limit"] == "10"
        assert resp.headers["X-RateLimit-Remaining"] == str(9 - i)
    refused = await client.get("/api/video-calls/config", headers=alice)
    error = await error_of(refused, 429)
    assert error["code"] == "RATE_LIMITED"
    assert refused.headers["Retry-After"] == "60"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) == math.ceil(clock().timestamp() + 60)

    # Another user has their own budget.
    bob = auth_headers(make_token("2" * 24, "client"))
    assert (await client.get("/api/video-calls/config", headers=bob)).status == 200
    # Admin endpoints are not counted.
    admin = auth_headers(make_token("a" * 24, "admin"))
    assert (await client.get(f"/api/admin/users/{'1' * 24}", headers=admin)).status == 404

    clock.advance(seconds=60)
    assert (await client.get("/api/video-calls/config", headers=alice)).status == 200


async def test_unauthenticated_requests_count_per_address(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_api_per_min=3)
    statuses = [(await client.get("/api/video-calls/config")).status for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


async def test_limiters_are_configured_from_config(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_api_per_min=7, rate_limit_ws_per_min=3)
    app = client.app
    assert app[API_RATE_LIMITER_KEY].limit == 7
    ws = app[SERVICE_KEY].ws_limiter
    assert ws.limit == 3
    assert [(await ws.hit("user:x")).allowed for _ in range(4)] == [True, True, True, False]
