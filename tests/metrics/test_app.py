"""`setup_metrics` inside a real aiohttp app: /metrics, the REST middleware, the WebSocket
observer, the sampler, end-of-call storage and the admin endpoints over it (api/admin_metrics.py,
reading the `Metrics` object), with a fake relay and real SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api import admin_metrics
from api.errors import ApiError, error_middleware, ok
from api.keys import QUALITY_KEY, SERVICE_KEY
from calls.errors import SESSION_NOT_FOUND
from calls.identity import mint_token
from calls.service import CallService
from metrics.keys import METRICS_KEY
from metrics.setup import Metrics, setup_metrics
from signaling.protocol import CLIENT_EVENTS, SERVER_EVENTS
from smiling_relay.config import Config, ConfigError
from storage.sqlite import SQLiteStorage
from tests.metrics.conftest import FakeRelay

SECRET = "s" * 40
ADMIN = "65a0000000000000000000aa"
CLIENT = "65a000000000000000000001"
PSY = "65a000000000000000000002"

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


def admin_headers(role: str = "admin", user: str = ADMIN) -> dict[str, str]:
    return {"x-auth-token": mint_token(user, role, SECRET)}


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def can_join(request: web.Request) -> web.Response:
    if request.match_info["sessionId"] == "missing":
        raise ApiError(404, SESSION_NOT_FOUND, "Session not found")
    return ok({"canJoin": True})


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    metrics = request.app[METRICS_KEY]
    async for msg in ws:
        metrics.ws_message(str(msg.data), "in")
        await ws.send_str("pong")
        metrics.ws_message("pong", "out")
    return ws


def make_app(
    relay: FakeRelay | None,
    db: Path | None,
    environ: dict[str, str] | None = None,
    **metrics_args: Any,
) -> web.Application:
    """An app with metrics wired as `create_app` wires them, and stub REST routes."""
    config = Config.from_env(
        {"JWT_SECRET": SECRET, "METRICS_SAMPLE_INTERVAL": "0.1", **(environ or {})}
    )
    app = web.Application(middlewares=[error_middleware])
    storage = SQLiteStorage(db) if db is not None else None
    if storage is not None:

        async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
            await storage.initialize()
            yield
            await storage.close()

        app.cleanup_ctx.append(storage_ctx)
    metrics = Metrics(
        relay=lambda: cast(Any, relay),
        store=lambda: storage,
        max_calls=config.metrics_max_calls,
        sample_interval=config.metrics_sample_interval,
        auth_token=config.metrics_auth_token,
        ws_events_in=CLIENT_EVENTS,
        ws_events_out=SERVER_EVENTS,
        **metrics_args,
    )
    # The admin endpoints authenticate through the call service (whose storage they never touch).
    app[SERVICE_KEY] = CallService(storage or SQLiteStorage(":memory:"), secret=SECRET)
    app[QUALITY_KEY] = metrics
    app.add_routes(admin_metrics.routes)
    app.router.add_get("/api/video-calls/can-join/{sessionId}", can_join)
    app.router.add_get("/api/crash", crash)
    app.router.add_get("/ws", ws_handler)
    setup_metrics(app, metrics)
    app.cleanup_ctx.append(metrics.writes)
    app.cleanup_ctx.append(metrics.context)
    return app


async def wait_for(
    condition: Callable[[], Awaitable[Any]], limit: float = 5.0, what: str = "condition"
) -> Any:
    """Poll `condition` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + limit
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_metrics_endpoint_and_independent_registries(
    aiohttp_client: ClientFactory, fake_relay: FakeRelay
) -> None:
    fake_relay.add("room-a", "s1", "audio", "in", bytes=123)
    one = await aiohttp_client(make_app(fake_relay, None))
    two = await aiohttp_client(make_app(None, None))
    resp = await one.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert resp.headers.get("Content-Encoding") == "gzip"
    text = await resp.text()
    assert metric(text, "smiling_relay_active_calls") == 1
    assert metric(text, "smiling_relay_stream_bytes_total", call="room-a") == 123

    one.app[METRICS_KEY].ws_error("ROOM_FULL")
    text_one = await (await one.get("/metrics")).text()
    text_two = await (await two.get("/metrics")).text()
    assert metric(text_one, "smiling_relay_errors_total", code="ROOM_FULL", source="ws") == 1
    assert metric(text_two, "smiling_relay_errors_total", code="ROOM_FULL") is None
    assert metric(text_two, "smiling_relay_active_calls") is None  # no relay in that app


async def test_rest_requests_are_timed_by_canonical_route(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(None, None))
    assert (await client.get("/api/video-calls/can-join/65a0000000000000000000ff")).status == 200
    assert (await client.get("/api/video-calls/can-join/missing")).status == 404
    assert (await client.get("/api/crash")).status == 500
    assert (await client.get("/no/such/65a0000000000000000000ff")).status == 404
    text = await (await client.get("/metrics")).text()

    route = "/api/video-calls/can-join/{sessionId}"
    h = "smiling_relay_http_request_duration_seconds_count"
    assert metric(text, h, route=route, method="GET", status="200") == 1
    assert metric(text, h, route=route, method="GET", status="404") == 1
    assert metric(text, h, route="/api/crash", status="500") == 1
    assert metric(text, h, route="unmatched", status="404") == 1
    assert "65a0000000000000000000ff" not in text  # ids never become label values

    e = "smiling_relay_errors_total"
    assert metric(text, e, code="SESSION_NOT_FOUND", source="api") == 1
    assert metric(text, e, code="INTERNAL_ERROR", source="api") == 1
    assert metric(text, e, code="NOT_FOUND", source="api") == 1
    assert client.app[METRICS_KEY].aggregates.pending_errors == 3


async def test_websocket_observer_and_no_timing_of_ws(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(None, None))
    metrics = client.app[METRICS_KEY]
    async with client.ws_connect("/ws") as ws:
        for event in ("join-room", "offer", "made-up-by-a-client"):
            await ws.send_str(event)
            assert (await ws.receive()).data == "pong"
    metrics.ws_message("server-news", "out")  # server-side events are trusted
    with pytest.raises(ValueError, match="direction"):
        metrics.ws_message("offer", "sideways")
    text = await (await client.get("/metrics")).text()
    m = "smiling_relay_websocket_messages_total"
    assert metric(text, m, event="join-room", direction="in") == 1
    assert metric(text, m, event="offer", direction="in") == 1
    assert metric(text, m, event="unknown", direction="in") == 1
    assert metric(text, m, event="pong", direction="out") == 3
    assert metric(text, m, event="server-news", direction="out") == 1
    assert "made-up-by-a-client" not in text
    assert metric(text, "smiling_relay_http_request_duration_seconds_count", route="/ws") is None


async def test_error_codes_are_bounded(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(None, None))
    metrics = client.app[METRICS_KEY]
    metrics.ws_error("not a code; DROP TABLE")
    for i in range(150):
        metrics.ws_error(f"CODE_{i}")
    text = await (await client.get("/metrics")).text()
    codes = {
        s.labels["code"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "smiling_relay_errors_total"
    }
    assert len(codes) <= 101
    assert "OTHER" in codes


async def test_metrics_token(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(None, None, {"METRICS_AUTH_TOKEN": "t0ken"}))
    assert (await client.get("/metrics")).status == 401
    bad = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
    good = await client.get("/metrics", headers={"Authorization": "Bearer t0ken"})
    assert good.status == 200


@pytest.mark.parametrize(
    "environ",
    [
        {"METRICS_MAX_CALLS": "lots"},
        {"METRICS_MAX_CALLS": "-1"},
        {"METRICS_SAMPLE_INTERVAL": "0"},
        {"METRICS_SAMPLE_INTERVAL": "nan"},
    ],
)
def test_bad_environment_is_a_config_error(environ: dict[str, str]) -> None:
    (name,) = environ
    with pytest.raises(ConfigError, match=name):  # the message names the setting
        make_app(None, None, environ)


async def test_call_end_stores_summary_and_aggregates(
    aiohttp_client: ClientFactory, fake_relay: FakeRelay, tmp_path: Path
) -> None:
    client = await aiohttp_client(make_app(fake_relay, tmp_path / "db.sqlite3"))
    storage = client.app[SERVICE_KEY].storage
    c = await storage.create_user(name="Client", email="c@example.org", role="client")
    p = await storage.create_user(name="Dr P", email="p@example.org", role="psychologist")
    session = await storage.create_session(
        client_id=c.id,
        psychologist_id=p.id,
        session_date=datetime.now(UTC),
        status="Confirmed",
        payment_status="Paid",
    )
    await storage.set_meeting_link(session.id, "room-e2e")
    metrics = client.app[METRICS_KEY]

    now = time.monotonic()
    a = fake_relay.add("room-e2e", "sA", "audio", "in", started_at=now, codec="opus")
    b = fake_relay.add(
        "room-e2e", "sB", "audio", "in", role="psychologist", started_at=now, codec="opus"
    )
    b_out = fake_relay.add(
        "room-e2e", "sB", "audio", "out", source="sA", role="psychologist", started_at=now
    )
    a_out = fake_relay.add("room-e2e", "sA", "audio", "out", source="sB", started_at=now)

    async def media_flows() -> bool:
        for s in (a, b, b_out, a_out):
            s.bytes += 400
            s.packets += 5
            s.frames += 5
        return metrics.sampler.calls == ["room-e2e"] and metrics.collector is not None

    await wait_for(media_flows, what="the sampler to pick the call up")
    # Several sampler passes with media (the pass count is the sampler's own, read directly).
    track = metrics.sampler._calls["room-e2e"]
    first_pass = track.passes

    async def passes_with_media() -> bool:
        await media_flows()
        return track.passes >= first_pass + 5

    await wait_for(passes_with_media, what="five sampler passes with media")

    resp = await client.get("/api/admin/metrics/calls/room-e2e", headers=admin_headers())
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["code"] == "CALL_METRICS_NOT_FOUND"
    assert body["error"]["details"]["active"] is True

    fake_relay.close("room-e2e", opened_at_wall=time.time() - 3, setup_times=(0.3, 0.5))

    async def stored() -> list[dict[str, Any]]:
        return await storage.find_call_metrics({"period": "call", "roomId": "room-e2e"})

    (doc,) = await wait_for(stored, what="the summary to be stored")
    assert doc["sessionId"] == session.id
    assert doc["completed"] is True
    assert doc["audioMos"]["min"] > 4

    resp = await client.get("/api/admin/metrics/calls/room-e2e", headers=admin_headers())
    assert resp.status == 200
    body = (await resp.json())["data"]
    assert body["roomId"] == "room-e2e"
    assert body["active"] is False
    (data,) = body["calls"]
    assert data["roomId"] == "room-e2e"
    assert data["sessionId"] == session.id
    assert data["endedAt"].endswith("Z")
    assert data["bitrate"]["in"]["avgBps"] > 0

    async def aggregated() -> dict[str, Any] | None:
        resp = await client.get(
            "/api/admin/metrics/aggregates?period=hourly", headers=admin_headers()
        )
        assert resp.status == 200
        rows = (await resp.json())["data"]["aggregates"]
        return rows[0] if rows and rows[0].get("uniqueUsers") else None

    row = await wait_for(aggregated, what="the hourly aggregate")
    assert row["totalCalls"] == 1
    assert row["completedCalls"] == 1
    assert row["uniqueUsers"] == 2
    assert row["averageConnectionTime"] == pytest.approx(0.4)
    assert "userKeys" not in row

    text = await (await client.get("/metrics")).text()
    assert metric(text, "smiling_relay_call_duration_seconds_count") == 1
    assert metric(text, "smiling_relay_call_summaries_total", result="stored") == 1
    assert metric(text, "smiling_relay_call_audio_mos_count") == 2
    assert metric(text, "smiling_relay_stream_bytes_total", call="room-e2e") is None


async def test_admin_endpoints_are_admin_only_and_validated(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await aiohttp_client(make_app(None, tmp_path / "db.sqlite3"))
    url = "/api/admin/metrics/calls/room-x"
    assert (await client.get(url)).status == 401
    forbidden = await client.get(url, headers=admin_headers("client", CLIENT))
    assert forbidden.status == 403
    assert (await forbidden.json())["error"]["code"] == "FORBIDDEN"
    missing = await client.get(url, headers=admin_headers())
    assert missing.status == 404
    assert (await missing.json())["error"]["details"] == {"roomId": "room-x", "active": False}

    agg = "/api/admin/metrics/aggregates"
    for query in (
        "?period=weekly",
        "?from=yesterday",
        "?period=hourly&from=2025-12-15T10:00:00Z&to=2025-12-15T09:00:00Z",
        "?period=hourly&from=2025-01-01T00:00:00Z&to=2025-12-15T00:00:00Z",
    ):
        resp = await client.get(agg + query, headers=admin_headers())
        assert resp.status == 400, query
        assert (await resp.json())["error"]["code"] == "VALIDATION_ERROR"
    resp = await client.get(
        agg + "?period=daily&from=2025-12-01T00:00:00Z&to=2025-12-15T00:00:00Z",
        headers=admin_headers(),
    )
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data["period"] == "daily"
    assert data["aggregates"] == []
    assert (await client.get(agg, headers=admin_headers("psychologist", PSY))).status == 403


async def test_admin_endpoints_without_storage(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(None, None))
    resp = await client.get("/api/admin/metrics/calls/room-x", headers=admin_headers())
    assert resp.status == 503


async def test_shutdown_stores_calls_still_open(
    aiohttp_client: ClientFactory, fake_relay: FakeRelay, tmp_path: Path
) -> None:
    db = tmp_path / "db.sqlite3"
    client = await aiohttp_client(make_app(fake_relay, db))
    metrics = client.app[METRICS_KEY]
    s = fake_relay.add("room-open", "sA", "audio", "in", started_at=time.monotonic())

    async def tracked() -> bool:
        s.bytes += 100
        s.packets += 1
        return "room-open" in metrics.sampler.calls

    await wait_for(tracked, what="the sampler to track the call")
    metrics.ws_error("CONNECTION_TIMEOUT")
    await client.close()  # runs the cleanup contexts

    conn = sqlite3.connect(db)
    docs = [row[0] for row in conn.execute("SELECT doc FROM call_metrics")]
    conn.close()
    assert any('"roomId":"room-open"' in d and '"endReason":"shutdown"' in d for d in docs)
    assert any('"CONNECTION_TIMEOUT":1' in d for d in docs)


def test_registration_order_puts_the_middleware_outermost() -> None:
    app = make_app(None, None)
    from metrics.http import request_metrics_middleware

    assert app.middlewares[0] is request_metrics_middleware
    assert any(r.resource and r.resource.canonical == "/metrics" for r in app.router.routes())
