"""Admin-only management endpoints: users, sessions, status/payment updates, audit reading."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from storage.base import format_datetime
from tests.helpers import BookingFactory, FakeClock, TokenFactory, auth_headers, data_of, error_of

Client = TestClient[web.Request, web.Application]


async def _user(client: Client, token: str, role: str, email: str) -> dict:
    resp = await client.post(
        "/api/admin/users",
        headers=auth_headers(token),
        json={"name": f"{role} person", "email": email, "role": role},
    )
    return dict(await data_of(resp, 201))


async def test_create_user_and_session_then_use_them(
    client: Client, admin_token: str, make_token: TokenFactory, clock: FakeClock
) -> None:
    jane = await _user(client, admin_token, "client", "Jane@Example.test")
    assert jane["email"] == "jane@example.test"
    assert len(jane["id"]) == 24
    smith = await _user(client, admin_token, "psychologist", "smith@example.test")
    fetched = await data_of(
        await client.get(f"/api/admin/users/{jane['id']}", headers=auth_headers(admin_token))
    )
    assert fetched == jane

    when = format_datetime(clock() + timedelta(minutes=5))
    resp = await client.post(
        "/api/admin/sessions",
        headers=auth_headers(admin_token),
        json={
            "client": jane["id"],
            "psychologist": smith["id"],
            "sessionDate": when,
            "status": "confirmed",
            "paymentStatus": "PAID",
        },
    )
    session = await data_of(resp, 201)
    assert session["status"] == "Confirmed"  # canonical spelling
    assert session["paymentStatus"] == "Paid"
    assert session["sessionDate"] == when
    assert session["client"] == {"id": jane["id"], "name": "client person", "email": jane["email"]}

    can = await data_of(
        await client.get(
            f"/api/video-calls/can-join/{session['id']}",
            headers=auth_headers(make_token(jane["id"], "client")),
        )
    )
    assert can["canJoin"] is True


async def test_update_status_and_payment(
    client: Client, booking_factory: BookingFactory, admin_token: str
) -> None:
    b = await booking_factory(payment_status="Pending")
    url = f"/api/admin/sessions/{b.session.id}"
    updated = await data_of(
        await client.patch(
            url, headers=auth_headers(admin_token), json={"paymentStatus": "verified"}
        )
    )
    assert updated["paymentStatus"] == "Verified"
    assert updated["status"] == "Confirmed"
    read = await data_of(await client.get(url, headers=auth_headers(admin_token)))
    assert read["paymentStatus"] == "Verified"
    empty = await client.patch(url, headers=auth_headers(admin_token), json={})
    assert (await error_of(empty, 400))["code"] == "VALIDATION_ERROR"
    bad = await client.patch(url, headers=auth_headers(admin_token), json={"status": "Sleeping"})
    assert "status" in (await error_of(bad, 400))["details"]["fields"]
    missing = await client.patch(
        f"/api/admin/sessions/{'0' * 24}",
        headers=auth_headers(admin_token),
        json={"status": "Confirmed"},
    )
    assert (await error_of(missing, 404))["code"] == "SESSION_NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"name", "email", "role"}),
        ({"name": "X", "email": "not-an-email", "role": "client"}, {"email"}),
        ({"name": "X", "email": "x@example.test", "role": "root"}, {"role"}),
        ({"name": " ", "email": "x@example.test", "role": "client", "extra": 1}, {"name", "extra"}),
    ],
)
async def test_user_validation(client: Client, admin_token: str, body: dict, fields: set) -> None:
    resp = await client.post("/api/admin/users", headers=auth_headers(admin_token), json=body)
    error = await error_of(resp, 400)
    assert error["code"] == "VALIDATION_ERROR"
    assert set(error["details"]["fields"]) == fields


async def test_duplicate_email(client: Client, admin_token: str) -> None:
    await _user(client, admin_token, "client", "dup@example.test")
    resp = await client.post(
        "/api/admin/users",
        headers=auth_headers(admin_token),
        json={"name": "Again", "email": "DUP@example.test", "role": "client"},
    )
    assert (await error_of(resp, 409))["code"] == "EMAIL_TAKEN"


async def test_session_validation(client: Client, admin_token: str) -> None:
    jane = await _user(client, admin_token, "client", "j@example.test")
    other = await _user(client, admin_token, "client", "o@example.test")
    resp = await client.post(
        "/api/admin/sessions",
        headers=auth_headers(admin_token),
        json={
            "client": jane["id"],
            "psychologist": other["id"],
            "sessionDate": "2025-12-15T14:00:00",
        },
    )
    error = await error_of(resp, 400)
    fields = error["details"]["fields"]
    assert "role client" in fields["psychologist"]
    assert "sessionDate" in fields  # no timezone
    resp = await client.post(
        "/api/admin/sessions",
        headers=auth_headers(admin_token),
        json={"client": "f" * 24, "psychologist": "x", "sessionDate": "2025-12-15T14:00:00Z"},
    )
    fields = (await error_of(resp, 400))["details"]["fields"]
    assert set(fields) == {"psychologist"}  # the client check waits for both ids to be valid


async def test_non_admins_are_refused(
    client: Client, booking_factory: BookingFactory, make_token: TokenFactory
) -> None:
    b = await booking_factory()
    for token in (b.client_token, b.psychologist_token):
        for method, path in (
            ("POST", "/api/admin/users"),
            ("POST", "/api/admin/sessions"),
            ("GET", f"/api/admin/sessions/{b.session.id}"),
            ("PATCH", f"/api/admin/sessions/{b.session.id}"),
            ("GET", f"/api/admin/sessions/{b.session.id}/audit"),
        ):
            resp = await client.request(method, path, headers=auth_headers(token), json={})
            assert (await error_of(resp, 403))["code"] == "FORBIDDEN"
    anonymous = await client.post("/api/admin/users", json={})
    await error_of(anonymous, 401)
