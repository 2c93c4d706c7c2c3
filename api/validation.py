"""Input parsing for the REST handlers: every failure is a 400 in the envelope."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from api.errors import INVALID_USER_ID, VALIDATION_ERROR, ApiError, from_call_error
from calls.errors import CallError
from calls.service import parse_session_id
from storage.base import is_object_id, to_utc_ms

MAX_PAGE_SIZE = 100


def session_id_param(value: str) -> str:
    """A path `:sessionId`, which must be a 24-hex ObjectId (the domain's rule)."""
    try:
        return parse_session_id(value)
    except CallError as exc:
        raise from_call_error(exc) from None


def user_id_param(value: str) -> str:
    if not is_object_id(value):
        raise ApiError(
            400,
            INVALID_USER_ID,
            "userId must be a 24-character hexadecimal ObjectId",
            {"userId": value[:64]},
        )
    return value.lower()


class FieldErrors:
    """Collects per-field problems so one 400 reports all of them."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def add(self, field: str, message: str) -> None:
        self.errors.setdefault(field, message)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ApiError(400, VALIDATION_ERROR, "Invalid request fields", {"fields": self.errors})


# Timestamps outside these years are typing errors, and near datetime's own limits a session's
# join window (15 minutes before, 2 hours after) would overflow.
EARLIEST_YEAR = 1970
LATEST_YEAR = 2999


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp with an explicit offset or `Z` in years 1970..2999; else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    parsed = to_utc_ms(parsed)
    return parsed if EARLIEST_YEAR <= parsed.year <= LATEST_YEAR else None


def choice(value: Any, options: Iterable[str]) -> str | None:
    """The canonical spelling of `value` among `options`, compared case-insensitively."""
    if not isinstance(value, str):
        return None
    wanted = value.strip().lower()
    return next((o for o in options if o.lower() == wanted), None)


def unknown_fields(body: Mapping[str, Any], allowed: Iterable[str], errors: FieldErrors) -> None:
    allowed_set = set(allowed)
    for name in body:
        if name not in allowed_set:
            errors.add(name, "unknown field")


def pagination(query: Mapping[str, str], *, default_limit: int = 10) -> tuple[int, int]:
    """`page` (>= 1) and `limit` (1..100) from the query string; `offset` is accepted too."""
    errors = FieldErrors()
    limit = _int_param(query, "limit", default_limit, 1, MAX_PAGE_SIZE, errors)
    page = _int_param(query, "page", 1, 1, 1_000_000, errors)
    if "offset" in query and "page" not in query:
        offset = _int_param(query, "offset", 0, 0, 100_000_000, errors)
        if offset % max(limit, 1):
            errors.add("offset", "offset must be a multiple of limit")
        page = offset // max(limit, 1) + 1
    errors.raise_if_any()
    return page, limit


def _int_param(
    query: Mapping[str, str], name: str, default: int, low: int, high: int, errors: FieldErrors
) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        errors.add(name, "must be an integer")
        return default
    if not low <= value <= high:
        errors.add(name, f"must be between {low} and {high}")
        return default
    return value
