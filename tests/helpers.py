"""Importable test helpers (`from tests.helpers import …`); fixtures live in conftest.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aiohttp import ClientResponse

from storage.base import SessionRecord, UserRecord, to_utc_ms

TEST_JWT_SECRET = "test-secret-for-smiling-relay-0123456789abcdef"
# High enough that no test trips it by accident; rate-limit tests lower it explicitly.
GENEROUS_RATE_LIMIT = 100_000
ADMIN_ID = "a" * 24


class FakeClock:
    """A settable clock (aware UTC). Starts at the real current time, ms precision, so
    tokens it stamps also pass libraries that read the real clock."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = to_utc_ms(start or datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        self.now += delta if delta is not None else timedelta(**kwargs)
        return self.now

    def set(self, when: datetime) -> datetime:
        self.now = when
        return self.now


@dataclass(frozen=True)
class Booking:
    """A session with its two participants and their tokens (plus an admin's)."""

    session: SessionRecord
    client: UserRecord
    psychologist: UserRecord
    client_token: str
    psychologist_token: str
    admin_token: str


class TokenFactory(Protocol):
    def __call__(self, user_id: str, role: str, **kwargs: Any) -> str: ...


class UserFactory(Protocol):
    async def __call__(self, role: str = "client", *, name: str | None = None) -> UserRecord: ...


class BookingFactory(Protocol):
    async def __call__(
        self,
        *,
        starts_in: timedelta = ...,
        status: str = ...,
        payment_status: str = ...,
        session_type: str = ...,
        is_video_call: bool = ...,
    ) -> Booking: ...


def auth_headers(token: str) -> dict[str, str]:
    return {"x-auth-token": token}


async def error_of(resp: ClientResponse, status: int) -> dict[str, Any]:
    """Assert `resp` is an envelope error with `status`; return its `error` object."""
    body = await resp.json()
    assert resp.status == status, body
    assert body["success"] is False
    error = body["error"]
    assert set(error) == {"code", "message", "details", "timestamp"}
    assert isinstance(error["code"], str)
    assert error["code"].isupper()
    return dict(error)


async def data_of(resp: ClientResponse, status: int = 200) -> Any:
    """Assert `resp` is a success envelope with `status`; return its `data`."""
    body = await resp.json()
    assert resp.status == status, body
    assert body["success"] is True
    return body["data"]
