"""Every failure answers in the seed's envelope; nothing leaks a traceback."""

from __future__ import annotations

import logging
from datetime import datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.errors import error_middleware
from api.keys import SERVICE_KEY
from calls.service import CallService
from smiling_relay.config import Config
from storage.base import StorageError, format_datetime
from storage.sqlite import SQLiteStorage
from tests.conftest import MakeClient
from tests.helpers import FakeClock, auth_headers, error_of

Client = TestClient[web.Request, web.Application]


async def test_unknown_route_is_enveloped(client: Client, clock: FakeClock) -> None:
    resp = await client.get("/api/nope")
    error = await error_of(resp, 404)
    assert error["code"] == "NOT_FOUND"
    assert error["timestamp"] == format_datetime(clock())
    datetime.fromisoformat(error["timestamp"].replace("Z", "+00:00"))


async def test_wrong_method_is_enveloped(client: Client, admin_token: str) -> None:
    resp = await client.delete("/api/video-calls/config", headers=auth_headers(admin_token))
    error = await error_of(resp, 405)
    assert error["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in resp.headers["Allow"]


async def test_bad_json_and_non_object(client: Client, admin_token: str) -> None:
    headers = auth_headers(admin_token)
    resp = await client.post("/api/admin/users", headers=headers, data=b"{oops")
    assert (await error_of(resp, 400))["code"] == "INVALID_JSON"
    resp = await client.post("/api/admin/users", headers=headers, json=[1, 2])
    assert (await error_of(resp, 400))["code"] == "INVALID_JSON"
    resp = await client.post("/api/admin/users", headers=headers)
    assert (await error_of(resp, 400))["code"] == "INVALID_JSON"


async def test_body_too_large(client: Client, admin_token: str) -> None:
    resp = await client.post(
        "/api/admin/users", headers=auth_headers(admin_token), data=b"x" * (1024 * 1024)
    )
    assert (await error_of(resp, 413))["code"] == "PAYLOAD_TOO_LARGE"


def _app_raising(exc: Exception, config: Config) -> web.Application:
    async def boom(_: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_middleware])
    # The envelope's timestamp comes from the service's clock (its storage is never used here).
    app[SERVICE_KEY] = CallService(
        SQLiteStorage(config.sqlite_path), secret=config.jwt_secret, clock=config.clock
    )
    app.router.add_get("/boom", boom)
    return app


async def test_internal_error_hides_details(
    aiohttp_client, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    client = await aiohttp_client(_app_raising(RuntimeError("secret path /etc/x"), config))
    with caplog.at_level(logging.ERROR, logger="api.errors"):
        resp = await client.get("/boom")
    error = await error_of(resp, 500)
    assert error["code"] == "INTERNAL_ERROR"
    text = await resp.text()
    assert "secret" not in text
    assert "Traceback" not in text
    # ... but the operator gets it all: the request, and the traceback of the exception
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "GET /boom" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert "Traceback" in caplog.text and "secret path /etc/x" in caplog.text


async def test_storage_failure_is_503(
    aiohttp_client, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    client = await aiohttp_client(_app_raising(StorageError("db down at 10.0.0.5"), config))
    with caplog.at_level(logging.ERROR, logger="api.errors"):
        resp = await client.get("/boom")
    error = await error_of(resp, 503)
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert "10.0.0.5" not in await resp.text()
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None and isinstance(record.exc_info[1], StorageError)
    assert "db down at 10.0.0.5" in caplog.text


async def test_health(client: Client) -> None:
    resp = await client.get("/healthz")
    body = await resp.json()
    assert resp.status == 200
    assert body == {"success": True, "data": {"status": "ok", "storage": "sqlite"}}


async def test_api_responses_are_not_cached(client: Client, admin_token: str) -> None:
    resp = await client.get("/api/video-calls/config", headers=auth_headers(admin_token))
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


async def test_cors(make_client: MakeClient, admin_token: str) -> None:
    client = await make_client(cors_origins=("https://app.example.org",))
    pre = await client.options(
        "/api/video-calls/config",
        headers={
            "Origin": "https://app.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-auth-token",
        },
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "x-auth-token" in pre.headers["Access-Control-Allow-Headers"]
    real = await client.get(
        "/api/video-calls/config",
        headers={"Origin": "https://app.example.org", **auth_headers(admin_token)},
    )
    assert real.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "X-RateLimit-Remaining" in real.headers["Access-Control-Expose-Headers"]
    other = await client.get(
        "/api/video-calls/config",
        headers={"Origin": "https://evil.example", **auth_headers(admin_token)},
    )
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_without_cors_origin_a_foreign_pages_preflight_fails(
    client: Client, admin_token: str
) -> None:
    """As docs/api.md says: no CORS_ORIGIN, no CORS at all (a 405 to the preflight, no CORS
    headers on the request itself), so only the server's own page can call the API."""
    preflight = {
        "Origin": "https://app.example.org",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-auth-token",
    }
    pre = await client.options("/api/video-calls/config", headers=preflight)
    assert pre.status == 405
    assert (await pre.json())["success"] is False
    assert "Access-Control-Allow-Origin" not in pre.headers
    real = await client.get(
        "/api/video-calls/config",
        headers={"Origin": "https://app.example.org", **auth_headers(admin_token)},
    )
    assert real.status == 200
    assert "Access-Control-Allow-Origin" not in real.headers
