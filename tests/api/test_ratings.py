"""The participants' call-quality rating: POST /api/video-calls/rating/{sessionId}, its admin view,
its Prometheus histogram and its join with the call's quality summary."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from metrics.keys import METRICS_KEY
from storage.base import Storage
from tests.helpers import (
    Booking,
    BookingFactory,
    FakeClock,
    TokenFactory,
    auth_headers,
    data_of,
    error_of,
)

Client = TestClient[web.Request, web.Application]


async def _started(client: Client, booking_factory: BookingFactory) -> Booking:
    b = await booking_factory()
    await data_of(
        await client.post(
            f"/api/video-calls/generate-room/{b.session.id}", headers=auth_headers(b.client_token)
        )
    )
    await data_of(
        await client.post(
            f"/api/video-calls/start/{b.session.id}", headers=auth_headers(b.psychologist_token)
        )
    )
    return b


async def _rate(client: Client, sid: str, token: str, body: Any) -> Any:
    return await client.post(
        f"/api/video-calls/rating/{sid}", headers=auth_headers(token), json=body
    )


async def _stored(storage: Storage) -> list[dict[str, Any]]:
    return await storage.find_call_metrics({"period": "rating"})


def _histogram_count(client: Client, role: str) -> float:
    registry = client.app[METRICS_KEY].registry
    value = registry.get_sample_value("smiling_relay_call_rating_count", {"role": role})
    return value or 0.0


async def test_participants_rate_once_each_and_admins_read_them(
    client: Client, booking_factory: BookingFactory, storage: Storage
) -> None:
    b = await _started(client, booking_factory)
    sid = b.session.id
    resp = await _rate(client, sid, b.client_token, {"rating": 2, "reasons": ["video", "audio"]})
    data = await data_of(resp, 201)
    assert data["rating"]["rating"] == 2
    # Stored in canonical order, with the role and the room.
    assert data["rating"]["reasons"] == ["audio", "video"]
    assert data["rating"]["role"] == "client"
    assert resp.headers["X-RateLimit-Limit"]  # counted like every video-call endpoint
    await data_of(await _rate(client, sid, b.psychologist_token, {"rating": 5}), 201)

    # A second rating is refused and changes nothing.
    err = await error_of(await _rate(client, sid, b.client_token, {"rating": 5}), 409)
    assert err["code"] == "ALREADY_RATED"
    docs = await _stored(storage)
    assert sorted((d["role"], d["rating"], d["reasons"]) for d in docs) == [
        ("client", 2, ["audio", "video"]),
        ("psychologist", 5, []),
    ]
    assert _histogram_count(client, "client") == 1
    assert _histogram_count(client, "psychologist") == 1
    registry = client.app[METRICS_KEY].registry
    assert (
        registry.get_sample_value(
            "smiling_relay_call_rating_bucket", {"role": "client", "le": "2.0"}
        )
        == 1
    )
    assert (
        registry.get_sample_value("smiling_relay_call_rating_reasons_total", {"reason": "video"})
        == 1
    )

    admin = await data_of(
        await client.get(f"/api/admin/metrics/ratings/{sid}", headers=auth_headers(b.admin_token))
    )
    assert [(r["role"], r["rating"]) for r in admin["ratings"]] == [
        ("client", 2),
        ("psychologist", 5),
    ]
    assert admin["ratings"][0]["roomId"].startswith("room-")
    # Not for participants.
    await error_of(
        await client.get(f"/api/admin/metrics/ratings/{sid}", headers=auth_headers(b.client_token)),
        403,
    )

    audit = [e for e in await storage.list_audit(session_id=sid) if e.action == "call_rating"]
    assert sorted((e.result, e.role, e.reason) for e in audit) == [
        ("allowed", "client", None),
        ("allowed", "psychologist", None),
        ("denied", "client", "ALREADY_RATED"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"rating": 0},
        {"rating": 6},
        {"rating": 3.5},
        {"rating": "4"},
        {"rating": True},
        {"rating": None},
        {"rating": 4, "reasons": ["microphone"]},
        {"rating": 4, "reasons": "audio"},
        {"rating": 4, "reasons": ["audio", "audio"]},
        {"rating": 4, "reasons": [1]},
        {"rating": 4, "comment": "free text is not taken"},
    ],
)
async def test_bad_input_is_refused_and_stores_nothing(
    client: Client, booking_factory: BookingFactory, storage: Storage, body: dict[str, Any]
) -> None:
    b = await _started(client, booking_factory)
    err = await error_of(await _rate(client, b.session.id, b.client_token, body), 400)
    assert err["code"] == "INVALID_RATING"
    assert err["details"]["fields"]
    assert await _stored(storage) == []
    assert _histogram_count(client, "client") == 0
    # The refusal did not use up the participant's one rating.
    await data_of(await _rate(client, b.session.id, b.client_token, {"rating": 4}), 201)


async def test_not_json_is_refused(client: Client, booking_factory: BookingFactory) -> None:
    b = await _started(client, booking_factory)
    resp = await client.post(
        f"/api/video-calls/rating/{b.session.id}",
        headers={**auth_headers(b.client_token), "Content-Type": "application/json"},
        data=b"[1,2",
    )
    err = await error_of(resp, 400)
    assert err["code"] == "INVALID_JSON"


async def test_only_the_sessions_participants_may_rate(
    client: Client,
    booking_factory: BookingFactory,
    make_token: TokenFactory,
    storage: Storage,
) -> None:
    b = await _started(client, booking_factory)
    sid = b.session.id
    outsider = make_token("c" * 24, "client")
    other_psy = make_token("d" * 24, "psychologist")
    for token, status, code in [
        (outsider, 403, None),
        (other_psy, 403, None),
        (b.admin_token, 403, "PERMISSION_DENIED"),
        ("not-a-token", 401, None),
    ]:
        err = await error_of(await _rate(client, sid, token, {"rating": 3}), status)
        if code:
            assert err["code"] == code
    err = await error_of(await _rate(client, "not-an-id", b.client_token, {"rating": 3}), 400)
    assert err["code"] == "INVALID_SESSION_ID"
    await error_of(await _rate(client, "e" * 24, b.client_token, {"rating": 3}), 404)
    assert await _stored(storage) == []


async def test_a_call_that_never_started_cannot_be_rated(
    client: Client, booking_factory: BookingFactory, storage: Storage
) -> None:
    b = await booking_factory()
    err = await error_of(await _rate(client, b.session.id, b.client_token, {"rating": 3}), 409)
    assert err["code"] == "CALL_NOT_STARTED"
    assert await _stored(storage) == []


async def test_rating_is_rate_limited(
    make_client: Any, booking_factory: BookingFactory, storage: Storage
) -> None:
    client = await make_client(rate_limit_api_per_min=3)
    b = await booking_factory()
    # generate-room + start by the psychologist, then the client's three tries.
    await data_of(
        await client.post(
            f"/api/video-calls/start/{b.session.id}", headers=auth_headers(b.psychologist_token)
        )
    )
    for _ in range(3):
        await error_of(await _rate(client, b.session.id, b.client_token, {"rating": 9}), 400)
    err = await error_of(await _rate(client, b.session.id, b.client_token, {"rating": 3}), 429)
    assert err["code"] == "RATE_LIMITED"
    assert await _stored(storage) == []


async def test_ratings_join_the_calls_quality_summary_and_the_aggregates(
    client: Client, booking_factory: BookingFactory, storage: Storage, clock: FakeClock
) -> None:
    """The summary is written after the call ends, the rating may come first: the admin
    view of the room's calls joins them whichever was stored first."""
    b = await _started(client, booking_factory)
    sid = b.session.id
    session = await storage.get_session(sid)
    assert session is not None and session.meeting_link
    room = session.meeting_link
    started = clock()
    clock.advance(minutes=1)
    await data_of(
        await _rate(client, sid, b.client_token, {"rating": 3, "reasons": ["audio"]}), 201
    )
    # The summary lands afterwards (what the metrics side writes when the relay closes the call).
    await storage.upsert_call_metrics(
        {"period": "call", "roomId": room, "startedAt": started},
        values={"endedAt": clock(), "streams": []},
    )
    data = await data_of(
        await client.get(f"/api/admin/metrics/calls/{room}", headers=auth_headers(b.admin_token))
    )
    (call,) = data["calls"]
    assert [(r["role"], r["rating"], r["reasons"]) for r in call["ratings"]] == [
        ("client", 3, ["audio"])
    ]
    metrics = client.app[METRICS_KEY]
    # The aggregate write runs in the background: flush waits for it.
    await metrics.flush()
    hourly = await data_of(
        await client.get(
            "/api/admin/metrics/aggregates?period=hourly", headers=auth_headers(b.admin_token)
        )
    )
    (agg,) = hourly["aggregates"]
    assert agg["ratingCount"] == 1 and agg["averageRating"] == 3.0
