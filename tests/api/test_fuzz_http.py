"""Property-based fuzzing of the REST face, against the real app on the production runner:
whatever the path, method, headers and body, the answer is never a 5xx nor INTERNAL_ERROR, an
error is the envelope, the server stays healthy, and a refused request changes nothing stored
(users and sessions; audit entries of refusals are the point of the audit log)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smiling_relay.config import Config
from tests.api.conftest import Served
from tests.api.test_connection_level import parse_response, raw_exchange
from tests.helpers import Booking, BookingFactory

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: a failure reproduces
)
METHODS = st.sampled_from(["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS", "HEAD"])
OPERATIONS = st.sampled_from(
    [
        "/api/video-calls/can-join/{}",
        "/api/video-calls/generate-room/{}",
        "/api/video-calls/start/{}",
        "/api/video-calls/end/{}",
        "/api/video-calls/session/{}",
        "/api/video-calls/history?page={}&limit={}",
        "/api/video-calls/config",
        "/api/admin/users",
        "/api/admin/sessions",
        "/api/admin/sessions/{}",
        "/api/admin/sessions/{}/audit",
        "/api/admin/metrics/calls/{}",
        "/healthz",
        "/{}",
        "/call/{}",
        "/static/{}",
    ]
)
SEGMENTS = st.one_of(
    st.just("SESSION"),
    st.text(min_size=0, max_size=40),
    st.from_regex(r"[0-9a-fA-F]{20,28}", fullmatch=True),
    st.sampled_from(["..", "%2e%2e", "-1", "0", "1e9", "null", "\ud800", "../../etc/passwd"]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "sessionDate",
        "status",
        "paymentStatus",
        "name",
        "email",
        "role",
        "client",
        "psychologist",
        "endTime",
        "duration",
    ]
)
OBJECTS = st.dictionaries(FIELDS, JSON_VALUES, max_size=5)
BODIES = st.one_of(
    st.none(),
    st.binary(max_size=200),
    OBJECTS.map(lambda d: json.dumps(d).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"[" * 5000 + b"]" * 5000, b'{"a":"\\ud800"}', b"\xff\xfe", b"{"]),
)
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
TOKENS = st.sampled_from(["client", "psychologist", "admin", "garbage", "none"])


def stored_state(config: Config) -> tuple[list[Any], list[Any]]:
    with sqlite3.connect(f"file:{config.sqlite_path}?mode=ro", uri=True) as conn:
        users = conn.execute("SELECT * FROM users ORDER BY id").fetchall()
        sessions = conn.execute("SELECT * FROM sessions ORDER BY id").fetchall()
    return users, sessions


def token_of(b: Booking, who: str, junk: str) -> dict[str, str]:
    tokens = {
        "client": b.client_token,
        "psychologist": b.psychologist_token,
        "admin": b.admin_token,
        "garbage": junk or "x",
    }
    return {"x-auth-token": tokens[who]} if who in tokens else {}


async def assert_healthy(served: Served) -> None:
    resp = await served.get("/healthz")
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def booking(booking_factory: BookingFactory) -> Booking:
    return await booking_factory()


@FUZZ
@given(
    method=METHODS,
    template=OPERATIONS,
    segments=st.lists(SEGMENTS, min_size=2, max_size=2),
    body=BODIES,
    who=TOKENS,
    content_type=st.sampled_from(["application/json", "text/plain", "", "multipart/form-data"]),
    extra=st.dictionaries(
        st.sampled_from(["X-Request-ID", "Origin", "Authorization", "Accept", "User-Agent"]),
        HEADER_TEXT,
        max_size=3,
    ),
    junk=HEADER_TEXT,
)
async def test_rest_never_answers_5xx(
    served: Served,
    config: Config,
    booking: Booking,
    method: str,
    template: str,
    segments: list[str],
    body: bytes | None,
    who: str,
    content_type: str,
    extra: dict[str, str],
    junk: str,
) -> None:
    parts = [
        booking.session.id if s == "SESSION" else quote(s, safe="", errors="replace")
        for s in segments
    ]
    path = template.format(*parts[: template.count("{}")])
    headers = {**extra, **token_of(booking, who, junk)}
    if content_type:
        headers["Content-Type"] = content_type
    before = stored_state(config)
    resp = await served.request(method, path, data=body, headers=headers)
    raw = await resp.read()
    assert resp.status < 500, (method, path, resp.status, raw[:300])
    if resp.status >= 400 and method != "HEAD" and resp.content_type == "application/json":
        envelope = json.loads(raw)
        assert envelope["success"] is False
        assert envelope["error"]["code"] != "INTERNAL_ERROR"
    if resp.status >= 400:
        assert stored_state(config) == before, (method, path, resp.status)
    await assert_healthy(served)


@FUZZ
@given(
    field=st.sampled_from(["status", "paymentStatus", "sessionDate"]),
    value=JSON_VALUES
    | st.from_regex(r"-?\d{1,6}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z?", fullmatch=True),
)
async def test_admin_patch_refuses_bad_values_without_writing(
    served: Served, config: Config, booking: Booking, field: str, value: Any
) -> None:
    before = stored_state(config)
    resp = await served.patch(
        f"/api/admin/sessions/{booking.session.id}",
        json={field: value},
        headers={"x-auth-token": booking.admin_token},
    )
    assert resp.status < 500, await resp.text()
    if resp.status >= 400:
        assert stored_state(config) == before
    # whatever was stored can be read back
    read = await served.get(
        f"/api/video-calls/session/{booking.session.id}",
        headers={"x-auth-token": booking.admin_token},
    )
    assert read.status == 200, await read.text()


@settings(FUZZ, max_examples=40)
@given(
    name=st.from_regex(r"X-[A-Za-z]{1,20}", fullmatch=True),
    size=st.integers(min_value=0, max_value=20_000),
    line=st.sampled_from(["GET /healthz HTTP/1.1", "GET /api/video-calls/config HTTP/1.1"]),
)
async def test_raw_requests_always_get_the_envelope(
    served: Served, name: str, size: int, line: str
) -> None:
    """Below aiohttp's parser too (header sizes around its 8,190-byte limit): JSON, never 5xx."""
    raw = await raw_exchange(
        served, f"{line}\r\nHost: x\r\nConnection: close\r\n{name}: {'v' * size}\r\n\r\n".encode()
    )
    status, headers, body = parse_response(raw)
    assert status < 500
    assert headers["content-type"].startswith("application/json"), (status, body[:200])
    if status >= 400:
        assert json.loads(body)["error"]["code"] in ("BAD_REQUEST", "UNAUTHORIZED")
