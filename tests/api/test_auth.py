"""JWT authentication on the REST face (api/auth.py): both headers, every 401."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from calls import identity as auth
from tests.calls.test_identity import USER, _b64, _sign
from tests.helpers import FakeClock, TokenFactory, error_of

Client = TestClient[web.Request, web.Application]


async def test_http_accepts_both_headers(client: Client, make_token: TokenFactory) -> None:
    token = make_token(USER, "client")
    for headers in ({"x-auth-token": token}, {"Authorization": f"Bearer {token}"}):
        resp = await client.get("/api/video-calls/config", headers=headers)
        assert resp.status == 200
        body = await resp.json()
        assert body["success"] is True and body["data"]["iceServers"] == [], body
    # the token identifies the caller: its history is asked for by its id, and it is empty
    resp = await client.get("/api/video-calls/history", headers={"x-auth-token": token})
    assert (await resp.json())["data"]["pagination"]["total"] == 0


async def test_http_unknown_user_is_trusted_by_signature(
    client: Client, make_token: TokenFactory
) -> None:
    # No user record exists for this id; the platform trusts the signature alone.
    resp = await client.get(
        "/api/video-calls/history", headers={"x-auth-token": make_token(USER, "client")}
    )
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data["callHistory"] == [] and data["pagination"]["total"] == 0


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, auth.MISSING_TOKEN),
        ({"x-auth-token": "junk"}, auth.MALFORMED_TOKEN),
        ({"Authorization": "Token abc"}, auth.MISSING_TOKEN),
    ],
)
async def test_http_401(client: Client, headers: dict[str, str], reason: str) -> None:
    resp = await client.get("/api/video-calls/config", headers=headers)
    error = await error_of(resp, 401)
    assert error["code"] == "UNAUTHORIZED"
    assert error["details"]["reason"] == reason


async def test_http_expired_by_app_clock(
    client: Client, make_token: TokenFactory, clock: FakeClock
) -> None:
    token = make_token(USER, "client", ttl=timedelta(minutes=5))
    clock.advance(minutes=6)
    resp = await client.get("/api/video-calls/config", headers={"x-auth-token": token})
    error = await error_of(resp, 401)
    assert error["details"]["reason"] == auth.TOKEN_EXPIRED


async def test_http_wrong_secret_and_alg_none(client: Client, clock: FakeClock) -> None:
    exp = int((clock() + timedelta(minutes=5)).timestamp())
    forged = _sign({"user": {"id": USER, "role": "admin"}, "exp": exp}, secret="y" * 40)
    unsigned = (
        _b64({"alg": "none"})
        + "."
        + _b64({"user": {"id": USER, "role": "admin"}, "exp": exp})
        + "."
    )
    for token, reason in ((forged, auth.INVALID_SIGNATURE), (unsigned, auth.INVALID_ALGORITHM)):
        resp = await client.post("/api/admin/users", headers={"x-auth-token": token}, json={})
        error = await error_of(resp, 401)
        assert (error["code"], error["details"]["reason"]) == ("UNAUTHORIZED", reason), error
