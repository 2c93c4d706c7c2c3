"""Every access attempt, allowed or refused, lands in the audit log."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient

from storage.base import Storage
from tests.helpers import (
    BookingFactory,
    FakeClock,
    TokenFactory,
    auth_headers,
    data_of,
    error_of,
)

Client = TestClient[web.Request, web.Application]


async def test_allowed_and_refused_attempts_are_audited(
    client: Client,
    booking_factory: BookingFactory,
    make_token: TokenFactory,
    storage: Storage,
    clock: FakeClock,
) -> None:
    b = await booking_factory()
    sid = b.session.id
    ua = {"User-Agent": "audit-test/1.0"}
    await data_of(
        await client.get(
            f"/api/video-calls/can-join/{sid}", headers={**auth_headers(b.client_token), **ua}
        )
    )
    outsider = make_token("c" * 24, "client")
    await error_of(
        await client.get(f"/api/video-calls/can-join/{sid}", headers=auth_headers(outsider)), 403
    )
    await error_of(
        await client.post(f"/api/video-calls/start/{sid}", headers={"x-auth-token": "bad"}), 401
    )
    await data_of(
        await client.post(
            f"/api/video-calls/start/{sid}", headers=auth_headers(b.psychologist_token)
        )
    )
    await data_of(
        await client.post(f"/api/video-calls/end/{sid}", headers=auth_headers(b.psychologist_token))
    )

    entries = list(reversed(await storage.list_audit(session_id=sid)))
    summary = [(e.action, e.result, e.user_id, e.role, e.reason) for e in entries]
    assert summary == [
        ("join_attempt", "allowed", b.client.id, "client", None),
        ("permission_denied", "denied", "c" * 24, "client", "NOT_A_PARTICIPANT"),
        ("permission_denied", "denied", None, None, "MALFORMED_TOKEN"),
        ("call_start", "allowed", b.psychologist.id, "psychologist", None),
        ("call_end", "allowed", b.psychologist.id, "psychologist", None),
    ]
    first = entries[0]
    assert first.ip_address == "127.0.0.1"
    assert first.user_agent == "audit-test/1.0"
    assert first.timestamp == clock()
    assert first.metadata["endpoint"] == "GET /api/video-calls/can-join/{sessionId}"
    assert entries[-1].duration == 0
    assert entries[1].error_code == "NOT_A_PARTICIPANT"


async def test_policy_refusal_and_bad_ids_are_audited(
    client: Client, booking_factory: BookingFactory, storage: Storage, admin_token: str
) -> None:
    b = await booking_factory(payment_status="Pending")
    await data_of(
        await client.get(
            f"/api/video-calls/can-join/{b.session.id}", headers=auth_headers(b.client_token)
        )
    )
    (entry,) = await storage.list_audit(session_id=b.session.id)
    assert (entry.action, entry.result, entry.reason) == (
        "join_denied",
        "denied",
        "PAYMENT_PENDING",
    )

    await error_of(
        await client.get("/api/video-calls/can-join/xyz", headers=auth_headers(admin_token)), 400
    )
    (bad,) = await storage.list_audit(user_id="a" * 24)
    assert bad.session_id is None
    assert bad.metadata["rawSessionId"] == "xyz"
    assert bad.reason == "INVALID_SESSION_ID"


async def test_admin_reads_the_audit_log(
    client: Client, booking_factory: BookingFactory, admin_token: str
) -> None:
    b = await booking_factory()
    await client.get(
        f"/api/video-calls/can-join/{b.session.id}", headers=auth_headers(b.client_token)
    )
    data = await data_of(
        await client.get(
            f"/api/admin/sessions/{b.session.id}/audit", headers=auth_headers(admin_token)
        )
    )
    assert data["sessionId"] == b.session.id
    (entry,) = data["entries"]
    assert entry["action"] == "join_attempt"
    assert entry["userId"] == b.client.id
    assert entry["ipAddress"] == "127.0.0.1"
