"""The seed's video-call endpoints against the real app (SQLite in a temp dir)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from smiling_relay.app import create_app
from smiling_relay.config import Config
from storage.base import Storage, format_datetime
from storage.mongo import MongoStorage
from tests.conftest import MakeClient
from tests.helpers import (
    ADMIN_ID,
    BookingFactory,
    FakeClock,
    TokenFactory,
    auth_headers,
    data_of,
    error_of,
)

Client = TestClient[web.Request, web.Application]
OUTSIDER = "c" * 24


# -- config ---------------------------------------------------------------------------------


async def test_config_without_ice_settings_is_empty(client: Client, admin_token: str) -> None:
    data = await data_of(
        await client.get("/api/video-calls/config", headers=auth_headers(admin_token))
    )
    assert data == {"iceServers": [], "e2ee": "preferred"}


async def test_config_hands_the_e2ee_policy_to_the_page(
    make_client: MakeClient, admin_token: str
) -> None:
    c = await make_client(e2ee="required")
    data = await data_of(await c.get("/api/video-calls/config", headers=auth_headers(admin_token)))
    assert data["e2ee"] == "required"


async def test_config_lists_stun_and_static_turn(make_client: MakeClient, admin_token: str) -> None:
    c = await make_client(
        stun_server_url="stun:stun.example.org:19302",
        turn_server_url="turn:turn.example.org:3478",
        turn_username="user",
        turn_password="pass",
    )
    data = await data_of(await c.get("/api/video-calls/config", headers=auth_headers(admin_token)))
    assert data["iceServers"] == [
        {"urls": "stun:stun.example.org:19302"},
        {"urls": "turn:turn.example.org:3478", "username": "user", "credential": "pass"},
    ]


async def test_config_turn_rest_credentials(
    make_client: MakeClient, make_token: TokenFactory, clock: FakeClock
) -> None:
    from calls.ice_servers import turn_rest_credentials

    c = await make_client(
        turn_server_url="turn:turn.example.org:3478",
        turn_urls=("turns:turn.example.org:5349",),
        turn_secret="s3cret",
        turn_credential_ttl=600,
    )
    token = make_token("1" * 24, "client")
    data = await data_of(await c.get("/api/video-calls/config", headers=auth_headers(token)))
    (server,) = data["iceServers"]
    assert server["urls"] == ["turn:turn.example.org:3478", "turns:turn.example.org:5349"]
    expiry, user = server["username"].split(":")
    assert user == "1" * 24
    assert int(expiry) == int(clock().timestamp()) + 600
    # the same credential as the function whose known answers tests/calls/test_ice_servers.py
    # checks (HMAC-SHA1 computed by openssl)
    assert (server["username"], server["credential"]) == turn_rest_credentials(
        "s3cret", "1" * 24, int(expiry)
    )


# -- can-join -------------------------------------------------------------------------------


async def test_can_join_allowed(client: Client, booking_factory: BookingFactory) -> None:
    b = await booking_factory(starts_in=timedelta(minutes=10))
    for token in (b.client_token, b.psychologist_token, b.admin_token):
        resp = await client.get(
            f"/api/video-calls/can-join/{b.session.id}", headers=auth_headers(token)
        )
        data = await data_of(resp)
        assert data["canJoin"] is True
        assert data["reason"] is None
        assert data["minutesUntilSession"] == 10
        assert data["sessionStatus"] == "Confirmed"
        assert data["paymentStatus"] == "Paid"
        start = b.session.session_date
        assert data["timeWindow"] == {
            "allowedFrom": format_datetime(start - timedelta(minutes=15)),
            "allowedUntil": format_datetime(start + timedelta(hours=2)),
        }
        assert data["sessionId"] == b.session.id


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"starts_in": timedelta(minutes=16)}, "TOO_EARLY"),
        ({"starts_in": -timedelta(hours=2, minutes=1)}, "SESSION_EXPIRED"),
        ({"payment_status": "Pending"}, "PAYMENT_PENDING"),
        ({"status": "Pending"}, "SESSION_NOT_CONFIRMED"),
        ({"status": "Cancelled"}, "SESSION_CANCELLED"),
        ({"status": "Declined"}, "SESSION_CANCELLED"),
        ({"status": "Completed"}, "SESSION_COMPLETED"),
        ({"is_video_call": False}, "NOT_A_VIDEO_CALL"),
    ],
)
async def test_can_join_refusals(
    client: Client, booking_factory: BookingFactory, kwargs: dict, reason: str
) -> None:
    b = await booking_factory(**kwargs)
    resp = await client.get(
        f"/api/video-calls/can-join/{b.session.id}", headers=auth_headers(b.client_token)
    )
    data = await data_of(resp)
    assert data["canJoin"] is False
    assert data["reason"] == reason


async def test_can_join_follows_the_clock(
    client: Client, booking_factory: BookingFactory, clock: FakeClock
) -> None:
    b = await booking_factory(starts_in=timedelta(minutes=20))
    url = f"/api/video-calls/can-join/{b.session.id}"
    first = await data_of(await client.get(url, headers=auth_headers(b.client_token)))
    assert (first["canJoin"], first["reason"], first["minutesUntilSession"]) == (
        False,
        "TOO_EARLY",
        20,
    )
    clock.advance(minutes=5)  # exactly 15 minutes before: the window opens
    second = await data_of(await client.get(url, headers=auth_headers(b.client_token)))
    assert (second["canJoin"], second["minutesUntilSession"]) == (True, 15)


@pytest.mark.parametrize("path", ["can-join", "session"])
async def test_outsider_gets_403(
    client: Client, booking_factory: BookingFactory, make_token: TokenFactory, path: str
) -> None:
    b = await booking_factory()
    for role in ("client", "psychologist"):
        resp = await client.get(
            f"/api/video-calls/{path}/{b.session.id}",
            headers=auth_headers(make_token(OUTSIDER, role)),
        )
        error = await error_of(resp, 403)
        assert error["code"] == "FORBIDDEN"
        assert "Confirmed" not in str(error)  # no session details leak


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "can-join"),
        ("POST", "generate-room"),
        ("POST", "start"),
        ("POST", "end"),
        ("GET", "session"),
    ],
)
async def test_session_id_validation_and_404(
    client: Client, admin_token: str, method: str, path: str
) -> None:
    headers = auth_headers(admin_token)
    bad = await client.request(method, f"/api/video-calls/{path}/not-an-object-id", headers=headers)
    assert (await error_of(bad, 400))["code"] == "INVALID_SESSION_ID"
    missing = await client.request(method, f"/api/video-calls/{path}/{'0' * 24}", headers=headers)
    assert (await error_of(missing, 404))["code"] == "SESSION_NOT_FOUND"
    anonymous = await client.request(method, f"/api/video-calls/{path}/{'0' * 24}")
    assert (await error_of(anonymous, 401))["code"] == "UNAUTHORIZED"


# -- generate-room --------------------------------------------------------------------------


async def test_generate_room_is_idempotent(
    client: Client, booking_factory: BookingFactory, storage: Storage
) -> None:
    b = await booking_factory(starts_in=timedelta(hours=3))  # too early to join, fine to prepare
    url = f"/api/video-calls/generate-room/{b.session.id}"
    first = await data_of(await client.post(url, headers=auth_headers(b.client_token)))
    assert first["roomId"].startswith("room-")
    assert first["sessionId"] == b.session.id
    assert first["sessionDate"] == format_datetime(b.session.session_date)
    assert first["sessionType"] == "Individual"
    assert first["participants"] == {
        "client": {"id": b.client.id, "name": b.client.name, "email": b.client.email},
        "psychologist": {
            "id": b.psychologist.id,
            "name": b.psychologist.name,
            "email": b.psychologist.email,
        },
    }
    again = await asyncio.gather(
        *(client.post(url, headers=auth_headers(t)) for t in (b.psychologist_token, b.admin_token))
    )
    for resp in again:
        assert (await data_of(resp))["roomId"] == first["roomId"]
    stored = await storage.get_session(b.session.id)
    assert stored is not None
    assert stored.meeting_link == first["roomId"]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"payment_status": "Pending"}, "PAYMENT_PENDING"),
        ({"status": "Cancelled"}, "SESSION_CANCELLED"),
        ({"status": "Booked"}, "SESSION_NOT_CONFIRMED"),
    ],
)
async def test_generate_room_refused_for_unbookable(
    client: Client, booking_factory: BookingFactory, kwargs: dict, code: str
) -> None:
    b = await booking_factory(**kwargs)
    resp = await client.post(
        f"/api/video-calls/generate-room/{b.session.id}", headers=auth_headers(b.client_token)
    )
    error = await error_of(resp, 403)
    assert error["code"] == code
    assert error["details"]["reason"] == code


async def test_generate_room_names_unknown_participants_as_null(
    client: Client, storage: Storage, clock: FakeClock, admin_token: str
) -> None:
    session = await storage.create_session(
        client_id="d" * 24,
        psychologist_id="e" * 24,
        session_date=clock(),
        status="Confirmed",
        payment_status="Completed",
    )
    data = await data_of(
        await client.post(
            f"/api/video-calls/generate-room/{session.id}", headers=auth_headers(admin_token)
        )
    )
    assert data["participants"]["client"] == {"id": "d" * 24, "name": None, "email": None}


# -- start / end ----------------------------------------------------------------------------


async def test_start_then_end(
    client: Client, booking_factory: BookingFactory, clock: FakeClock
) -> None:
    b = await booking_factory(starts_in=timedelta(minutes=2))
    sid = b.session.id
    started_at = clock()
    resp = await client.post(f"/api/video-calls/start/{sid}", headers=auth_headers(b.client_token))
    data = await data_of(resp)
    assert data["message"] == "Video call started"
    assert data["alreadyStarted"] is False
    assert data["session"]["id"] == sid
    assert data["session"]["status"] == "In Progress"
    assert data["session"]["videoCallStarted"] == format_datetime(started_at)

    clock.advance(minutes=1)
    again = await data_of(
        await client.post(
            f"/api/video-calls/start/{sid}", headers=auth_headers(b.psychologist_token)
        )
    )
    assert again["alreadyStarted"] is True
    assert again["session"]["videoCallStarted"] == format_datetime(started_at)  # first wins

    # The second participant can still join while the call runs.
    check = await data_of(
        await client.get(
            f"/api/video-calls/can-join/{sid}", headers=auth_headers(b.psychologist_token)
        )
    )
    assert check["canJoin"] is True

    clock.advance(minutes=44, seconds=31)  # 45 min 31 s after the start → 46 minutes
    ended = await data_of(
        await client.post(f"/api/video-calls/end/{sid}", headers=auth_headers(b.psychologist_token))
    )
    assert ended["message"] == "Video call ended"
    assert ended["duration"] == 46
    assert ended["session"]["status"] == "Completed"
    assert ended["session"]["callDuration"] == 46
    assert ended["session"]["videoCallEnded"] == format_datetime(clock())

    clock.advance(minutes=5)
    twice = await data_of(
        await client.post(f"/api/video-calls/end/{sid}", headers=auth_headers(b.client_token))
    )
    assert twice["alreadyEnded"] is True
    assert twice["duration"] == 46

    restart = await client.post(
        f"/api/video-calls/start/{sid}", headers=auth_headers(b.client_token)
    )
    assert (await error_of(restart, 409))["code"] == "CALL_ALREADY_ENDED"


async def test_concurrent_starts_agree(client: Client, booking_factory: BookingFactory) -> None:
    b = await booking_factory()
    url = f"/api/video-calls/start/{b.session.id}"
    responses = await asyncio.gather(
        *(
            client.post(url, headers=auth_headers(t))
            for t in (b.client_token, b.psychologist_token) * 3
        )
    )
    bodies = [await data_of(r) for r in responses]
    assert len({d["session"]["videoCallStarted"] for d in bodies}) == 1
    assert sum(not d["alreadyStarted"] for d in bodies) == 1


async def test_start_refused_outside_window(
    client: Client, booking_factory: BookingFactory
) -> None:
    b = await booking_factory(starts_in=timedelta(hours=1))
    resp = await client.post(
        f"/api/video-calls/start/{b.session.id}", headers=auth_headers(b.client_token)
    )
    error = await error_of(resp, 403)
    assert error["code"] == "TOO_EARLY"
    assert error["details"]["minutesUntilSession"] == 60


async def test_end_before_start_is_409(client: Client, booking_factory: BookingFactory) -> None:
    b = await booking_factory()
    resp = await client.post(
        f"/api/video-calls/end/{b.session.id}", headers=auth_headers(b.client_token)
    )
    assert (await error_of(resp, 409))["code"] == "CALL_NOT_STARTED"


async def test_end_with_client_end_time(
    client: Client, booking_factory: BookingFactory, clock: FakeClock
) -> None:
    b = await booking_factory()
    sid = b.session.id
    headers = auth_headers(b.client_token)
    start = clock()
    await data_of(await client.post(f"/api/video-calls/start/{sid}", headers=headers))
    clock.advance(minutes=50)
    url = f"/api/video-calls/end/{sid}"

    future = await client.post(
        url, headers=headers, json={"endTime": format_datetime(clock() + timedelta(seconds=1))}
    )
    assert (await error_of(future, 400))["code"] == "INVALID_END_TIME"
    before = await client.post(url, headers=headers, json={"endTime": format_datetime(start)})
    assert (await error_of(before, 400))["code"] == "INVALID_END_TIME"
    garbage = await client.post(url, headers=headers, json={"endTime": "yesterday"})
    error = await error_of(garbage, 400)
    assert error["code"] == "VALIDATION_ERROR"
    assert "endTime" in error["details"]["fields"]
    unknown = await client.post(url, headers=headers, json={"duration": 999})
    assert (await error_of(unknown, 400))["details"]["fields"] == {"duration": "unknown field"}
    bad_json = await client.post(url, headers=headers, data=b"{not json")
    assert (await error_of(bad_json, 400))["code"] == "INVALID_JSON"

    ok = await data_of(
        await client.post(
            url, headers=headers, json={"endTime": format_datetime(start + timedelta(minutes=45))}
        )
    )
    assert ok["duration"] == 45
    assert ok["session"]["videoCallEnded"] == format_datetime(start + timedelta(minutes=45))


async def test_outsider_cannot_start_or_end(
    client: Client, booking_factory: BookingFactory, make_token: TokenFactory
) -> None:
    b = await booking_factory()
    token = make_token(OUTSIDER, "psychologist")
    for path in ("start", "end", "generate-room"):
        resp = await client.post(
            f"/api/video-calls/{path}/{b.session.id}", headers=auth_headers(token)
        )
        assert (await error_of(resp, 403))["code"] == "FORBIDDEN"


# -- session & history ----------------------------------------------------------------------


async def test_session_details(client: Client, booking_factory: BookingFactory) -> None:
    b = await booking_factory()
    data = await data_of(
        await client.get(
            f"/api/video-calls/session/{b.session.id}", headers=auth_headers(b.client_token)
        )
    )
    session = data["session"]
    assert session["id"] == b.session.id
    assert session["status"] == "Confirmed"
    assert session["paymentStatus"] == "Paid"
    assert session["client"]["name"] == b.client.name
    assert session["psychologist"]["id"] == b.psychologist.id
    # no room generated, no call yet: the values, not only the keys
    assert {
        k: session[k]
        for k in (
            "meetingLink",
            "isVideoCall",
            "videoCallStarted",
            "videoCallEnded",
            "callDuration",
        )
    } == {
        "meetingLink": None,
        "isVideoCall": True,
        "videoCallStarted": None,
        "videoCallEnded": None,
        "callDuration": None,
    }
    assert session["sessionDate"] == format_datetime(b.session.session_date)
    assert session["canJoin"] is True and session["reason"] is None


async def test_history_is_per_caller_and_paginated(
    client: Client, booking_factory: BookingFactory, clock: FakeClock
) -> None:
    bookings = [await booking_factory() for _ in range(3)]
    for b in bookings:
        await data_of(
            await client.post(
                f"/api/video-calls/start/{b.session.id}", headers=auth_headers(b.client_token)
            )
        )
        clock.advance(minutes=1)
    mine = await data_of(
        await client.get("/api/video-calls/history", headers=auth_headers(bookings[0].client_token))
    )
    assert [c["sessionId"] for c in mine["callHistory"]] == [bookings[0].session.id]
    item = mine["callHistory"][0]
    assert item["client"]["name"] == bookings[0].client.name
    assert item["callData"]["startTime"] is not None
    assert mine["pagination"] == {"page": 1, "limit": 10, "offset": 0, "total": 1, "pages": 1}

    admin = bookings[0].admin_token
    page = await data_of(
        await client.get("/api/video-calls/history?limit=2&page=2", headers=auth_headers(admin))
    )
    assert page["pagination"]["total"] == 3
    assert [c["sessionId"] for c in page["callHistory"]] == [bookings[0].session.id]
    by_offset = await data_of(
        await client.get("/api/video-calls/history?limit=2&offset=2", headers=auth_headers(admin))
    )
    assert by_offset["callHistory"] == page["callHistory"]
    bad = await client.get("/api/video-calls/history?limit=0", headers=auth_headers(admin))
    assert (await error_of(bad, 400))["code"] == "VALIDATION_ERROR"


async def test_admin_without_user_record_can_act(
    client: Client, booking_factory: BookingFactory, make_token: TokenFactory, storage: Storage
) -> None:
    b = await booking_factory()
    token = make_token(ADMIN_ID, "admin")
    started = await data_of(
        await client.post(f"/api/video-calls/start/{b.session.id}", headers=auth_headers(token))
    )
    assert started["alreadyStarted"] is False
    assert started["session"]["status"] == "In Progress"
    stored = await storage.get_session(b.session.id)
    assert stored is not None and stored.status == "In Progress"
    starts = [
        e for e in await storage.list_audit(session_id=b.session.id) if e.action == "call_start"
    ]
    assert [(e.user_id, e.role) for e in starts] == [(ADMIN_ID, "admin")], starts


async def test_api_over_mongodb_backend(
    aiohttp_client: Any, config: Config, make_token: TokenFactory, clock: FakeClock
) -> None:
    """The same API over the MongoDB backend (mongomock-motor), on a platform-shaped booking."""
    from bson import ObjectId
    from mongomock_motor import AsyncMongoMockClient

    db: Any = AsyncMongoMockClient()["smiling-steps"]
    client_id, psych_id, session_id = ObjectId(), ObjectId(), ObjectId()
    await db["users"].insert_many(
        [
            {"_id": client_id, "name": "Jane", "email": "jane@x.test", "role": "client"},
            {"_id": psych_id, "name": "Dr. Smith", "email": "smith@x.test", "role": "psychologist"},
        ]
    )
    await db["sessions"].insert_one(
        {
            "_id": session_id,
            "client": client_id,
            "psychologist": psych_id,
            "sessionType": "Individual",
            "sessionDate": clock() + timedelta(minutes=3),
            "status": "Confirmed",
            "paymentStatus": "completed",
        }
    )
    store = MongoStorage(db, clock=clock)
    http = await aiohttp_client(create_app(config, store))
    headers = auth_headers(make_token(str(client_id), "client"))
    room = await data_of(
        await http.post(f"/api/video-calls/generate-room/{session_id}", headers=headers)
    )
    assert room["participants"]["psychologist"]["name"] == "Dr. Smith"
    await data_of(await http.post(f"/api/video-calls/start/{session_id}", headers=headers))
    clock.advance(minutes=30)
    ended = await data_of(await http.post(f"/api/video-calls/end/{session_id}", headers=headers))
    assert ended["duration"] == 30
    raw = await db["sessions"].find_one({"_id": session_id})
    assert (raw["meetingLink"], raw["status"], raw["callDuration"]) == (
        room["roomId"],
        "Completed",
        30,
    )
    assert await db["videocallauditlogs"].count_documents({"sessionId": session_id}) == 3
    await http.close()
