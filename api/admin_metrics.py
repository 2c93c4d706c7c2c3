"""Admin endpoints over the stored quality data (admin role only, the API's error envelope).

GET /api/admin/metrics/calls/{roomId}
    the end-of-call summaries of the calls held in that room, oldest first (a room normally
    hosts one call; more when everyone left and came back)
GET /api/admin/metrics/aggregates?period=hourly|daily&from=ISO&to=ISO
    the hourly or daily aggregates whose period starts in [from, to)
    (defaults: the last 24 hours for hourly, the last 30 days for daily)

The data comes through `QualityReader`, a protocol defined here and implemented by
`metrics.setup.Metrics` (wired by the composition root), so neither package imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aiohttp import web

from api.auth import require_admin
from api.errors import VALIDATION_ERROR, ApiError, ok
from api.keys import QUALITY_KEY, SERVICE_KEY
from storage.base import format_datetime

CALL_ROUTE = "/api/admin/metrics/calls/{roomId}"
AGGREGATES_ROUTE = "/api/admin/metrics/aggregates"
CALL_METRICS_NOT_FOUND = "CALL_METRICS_NOT_FOUND"
STORAGE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
MAX_ROOM_ID_LENGTH = 128
DEFAULT_SPAN = {"hourly": timedelta(hours=24), "daily": timedelta(days=30)}
MAX_SPAN = {"hourly": timedelta(days=31), "daily": timedelta(days=366)}
PERIODS = tuple(DEFAULT_SPAN)
# Internal fields that never leave the service.
PRIVATE_FIELDS = frozenset({"userKeys", "_id"})

routes = web.RouteTableDef()


class QualityReader(Protocol):
    """What these endpoints read from the metrics side."""

    def has_storage(self) -> bool: ...

    def is_call_active(self, room_id: str) -> bool: ...

    async def call_summaries(self, room_id: str) -> list[dict[str, Any]]:
        """The stored end-of-call summaries of this room's calls, oldest first."""
        ...

    def period_start(self, when: datetime, period: str) -> datetime: ...

    def period_length(self, period: str) -> timedelta: ...

    async def read_aggregates(
        self, period: str, start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        """The aggregates of the periods starting in [start, end), errors counted up to now."""
        ...


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items() if k not in PRIVATE_FIELDS}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _now(request: web.Request) -> datetime:
    service = request.config_dict.get(SERVICE_KEY)
    return service.clock() if service is not None else datetime.now(UTC)


def _parse_time(name: str, raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, VALIDATION_ERROR, f"`{name}` must be an ISO 8601 timestamp", {"field": name}
        ) from None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


@routes.get(CALL_ROUTE)
async def call_summary(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    room_id = request.match_info["roomId"]
    if not room_id or len(room_id) > MAX_ROOM_ID_LENGTH:
        raise ApiError(400, VALIDATION_ERROR, "Invalid roomId", {"field": "roomId"})
    reader = request.config_dict[QUALITY_KEY]
    if not reader.has_storage():
        raise ApiError(503, STORAGE_UNAVAILABLE, "Storage is not configured")
    docs = await reader.call_summaries(room_id)
    active = reader.is_call_active(room_id)
    if not docs:
        raise ApiError(
            404,
            CALL_METRICS_NOT_FOUND,
            "No quality summary for this call"
            + (" yet: it is still in progress" if active else ""),
            {"roomId": room_id, "active": active},
        )
    return ok({"roomId": room_id, "active": active, "calls": _jsonable(docs)})


@routes.get(AGGREGATES_ROUTE)
async def aggregates(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    period = request.query.get("period", "hourly")
    if period not in PERIODS:
        raise ApiError(
            400,
            VALIDATION_ERROR,
            f"`period` must be one of {', '.join(PERIODS)}",
            {"field": "period"},
        )
    now = _now(request)
    end = _parse_time("to", request.query["to"]) if "to" in request.query else now
    start = (
        _parse_time("from", request.query["from"])
        if "from" in request.query
        else end - DEFAULT_SPAN[period]
    )
    if start >= end:
        raise ApiError(400, VALIDATION_ERROR, "`from` must be before `to`", {"field": "from"})
    if end - start > MAX_SPAN[period]:
        raise ApiError(
            400,
            VALIDATION_ERROR,
            f"At most {MAX_SPAN[period].days} days of {period} aggregates per request",
            {"field": "from"},
        )
    reader = request.config_dict[QUALITY_KEY]
    if not reader.has_storage():
        raise ApiError(503, STORAGE_UNAVAILABLE, "Storage is not configured")
    # A period is included when it starts in [from, to); align `from` down so the period
    # containing it is included too.
    aligned = reader.period_start(start, period)
    docs = await reader.read_aggregates(period, aligned, end)
    return ok(
        {
            "period": period,
            "from": format_datetime(aligned),
            "to": format_datetime(end),
            "periodSeconds": int(reader.period_length(period).total_seconds()),
            "units": {"duration": "seconds", "connectionTime": "seconds"},
            "aggregates": _jsonable(docs),
        }
    )
