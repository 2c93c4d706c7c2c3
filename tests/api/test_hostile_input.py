"""Hostile REST input found by the outside attack (issue 14): a clear 400, nothing stored.

Each of these answered 500 before, and the first two also wrote a row that broke the session
for good (a year before 1000 was stored as "999-12-31…", which could not be read back).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from smiling_relay.config import Config
from storage.base import format_datetime, parse_datetime
from tests.helpers import BookingFactory, auth_headers, data_of, error_of

Client = TestClient[web.Request, web.Application]


def _rows(config: Config, table: str) -> int:
    with sqlite3.connect(config.sqlite_path) as db:
        count: int = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return count


def test_years_before_1000_are_written_with_four_digits() -> None:
    early = datetime(999, 12, 31, tzinfo=UTC)
    assert format_datetime(early) == "0999-12-31T00:00:00.000Z"
    assert parse_datetime(format_datetime(early)) == early
    assert format_datetime(datetime(2025, 12, 15, 14, 0, 0, 123456, tzinfo=UTC)) == (
        "2025-12-15T14:00:00.123Z"
    )


@pytest.mark.parametrize(
    "when", ["0999-12-31T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]
)
async def test_a_session_date_out_of_range_is_refused_and_changes_nothing(
    client: Client, booking_factory: BookingFactory, when: str
) -> None:
    booking = await booking_factory()
    path = f"/api/admin/sessions/{booking.session.id}"
    before = await data_of(await client.get(path, headers=auth_headers(booking.admin_token)))
    resp = await client.patch(
        path, headers=auth_headers(booking.admin_token), json={"sessionDate": when}
    )
    error = await error_of(resp, 400)
    assert error["code"] == "VALIDATION_ERROR" and "sessionDate" in error["details"]["fields"]
    after = await data_of(await client.get(path, headers=auth_headers(booking.admin_token)))
    assert after == before
    can_join = await client.get(
        f"/api/video-calls/can-join/{booking.session.id}",
        headers=auth_headers(booking.client_token),
    )
    assert (await data_of(can_join))["canJoin"] is True


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00Z", "0999-12-31T00:00:00Z"])
async def test_creating_a_session_out_of_range_stores_no_row(
    client: Client, booking_factory: BookingFactory, config: Config, when: str
) -> None:
    booking = await booking_factory()
    sessions = _rows(config, "sessions")
    resp = await client.post(
        "/api/admin/sessions",
        headers=auth_headers(booking.admin_token),
        json={
            "client": booking.client.id,
            "psychologist": booking.psychologist.id,
            "sessionDate": when,
            "status": "Confirmed",
            "paymentStatus": "Paid",
        },
    )
    assert (await error_of(resp, 400))["code"] == "VALIDATION_ERROR"
    assert _rows(config, "sessions") == sessions


async def test_deeply_nested_json_is_invalid_json(
    client: Client, booking_factory: BookingFactory
) -> None:
    booking = await booking_factory()
    resp = await client.post(
        f"/api/video-calls/end/{booking.session.id}",
        headers={**auth_headers(booking.client_token), "Content-Type": "application/json"},
        data="[" * 5000 + "]" * 5000,
    )
    assert (await error_of(resp, 400))["code"] == "INVALID_JSON"


async def test_a_lone_surrogate_in_a_name_is_refused_and_stores_nothing(
    client: Client, booking_factory: BookingFactory, config: Config
) -> None:
    booking = await booking_factory()
    users = _rows(config, "users")
    resp = await client.post(
        "/api/admin/users",
        headers={**auth_headers(booking.admin_token), "Content-Type": "application/json"},
        data='{"name": "Jane \\ud800", "email": "jane.s@example.test", "role": "client"}',
    )
    assert (await error_of(resp, 400))["code"] == "INVALID_JSON"
    assert _rows(config, "users") == users
