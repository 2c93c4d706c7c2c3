"""Shared fixtures: a test configuration, a controllable clock, a real app over a temp SQLite
file, token helpers and a factory for users and bookings.

Sub-suites (tests/relay, tests/signaling, tests/browser, tests/metrics, …) add their own
conftest.py; everything here is generic so they can build on it:

    async def test_x(client, booking_factory, auth_headers):
        b = await booking_factory()
        resp = await client.get(f"/api/video-calls/can-join/{b.session.id}",
                                headers=auth_headers(b.client_token))
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any, Protocol

# Imported up front: hypothesis' pytest plugin otherwise imports it lazily at session end, and
# after the media tests have run threads that compile trips CPython 3.11.7's
# "AST constructor recursion depth mismatch" bug.
import hypothesis  # noqa: F401
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from calls.identity import mint_token
from smiling_relay.app import create_app
from smiling_relay.config import Config
from storage.base import Storage, UserRecord
from storage.sqlite import SQLiteStorage
from tests.helpers import (
    ADMIN_ID,
    GENEROUS_RATE_LIMIT,
    TEST_JWT_SECRET,
    Booking,
    BookingFactory,
    FakeClock,
    TokenFactory,
    UserFactory,
)
from tests.helpers import auth_headers as auth_headers_fn
from tests.protocol_traffic import Traffic, watch

__all__ = ["TEST_JWT_SECRET", "Booking", "FakeClock"]

# In CI a skip for a missing integration component fails the run (tests/require_integration.py).
pytest_plugins = ["tests.require_integration"]


@pytest.fixture(autouse=True)
def signaling_traffic(monkeypatch: pytest.MonkeyPatch) -> Iterator[Traffic]:
    """Every signaling frame of the test is checked against docs/signaling.schema.json
    (tests/protocol_traffic.py); a mismatch fails the test."""
    traffic = watch(monkeypatch)
    yield traffic
    assert not traffic.mismatches, "signaling traffic off the schema:\n" + "\n".join(
        traffic.mismatches[:20]
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config(tmp_path: Path, clock: FakeClock) -> Config:
    """Test configuration: fixed secret, temp SQLite file, generous limits, fake clock."""
    return Config(
        jwt_secret=TEST_JWT_SECRET,
        environment="test",
        host="127.0.0.1",
        port=0,
        sqlite_path=str(tmp_path / "relay.sqlite3"),
        rate_limit_api_per_min=GENEROUS_RATE_LIMIT,
        rate_limit_ws_per_min=GENEROUS_RATE_LIMIT,
        clock=clock,
    )


@pytest.fixture
async def storage(config: Config) -> AsyncIterator[Storage]:
    """An initialized SQLite storage in a temp dir (shared by the app fixtures)."""
    store = SQLiteStorage(config.sqlite_path, clock=config.clock)
    await store.initialize()
    yield store
    await store.close()


AppFactory = Callable[..., web.Application]


@pytest.fixture
def make_app(config: Config, storage: Storage) -> AppFactory:
    """Build the real app; keyword arguments override `Config` fields (e.g. rate limits)."""

    def factory(**overrides: Any) -> web.Application:
        return create_app(dataclasses.replace(config, **overrides), storage)

    return factory


ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


class MakeClient(Protocol):
    async def __call__(self, **overrides: Any) -> Client: ...


@pytest.fixture
async def make_client(
    storage: Storage, make_app: AppFactory, aiohttp_client: ClientFactory
) -> AsyncIterator[MakeClient]:
    """`await make_client(**config_overrides)` → a test client for a fresh real app.

    The clients are closed here, before `storage` is torn down, so the app's shutdown
    hooks (relay, metrics) can still write to it.
    """
    made: list[Client] = []

    async def factory(**overrides: Any) -> Client:
        test_client = await aiohttp_client(make_app(**overrides))
        made.append(test_client)
        return test_client

    yield factory
    for test_client in reversed(made):
        await test_client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    """A test client for the real app with the default test configuration."""
    return await make_client()


@pytest.fixture
def make_token(config: Config) -> TokenFactory:
    """Sign a token with the test secret, stamped by the fake clock."""

    def factory(user_id: str, role: str, **kwargs: Any) -> str:
        kwargs.setdefault("now", config.clock())
        return mint_token(user_id, role, config.jwt_secret, **kwargs)

    return factory


@pytest.fixture
def auth_headers() -> Callable[[str], dict[str, str]]:
    """`auth_headers(token)` → `{"x-auth-token": token}`."""
    return auth_headers_fn


@pytest.fixture
def user_factory(storage: Storage) -> UserFactory:
    numbers = count(1)

    async def factory(role: str = "client", *, name: str | None = None) -> UserRecord:
        n = next(numbers)
        return await storage.create_user(
            name=name or f"{role.title()} {n}", email=f"{role}{n}@example.test", role=role
        )

    return factory


@pytest.fixture
def booking_factory(
    storage: Storage, user_factory: UserFactory, make_token: TokenFactory, clock: FakeClock
) -> BookingFactory:
    """Create a client, a psychologist and a session between them (default: joinable now —
    Confirmed, Paid, starting in 5 minutes)."""

    async def factory(
        *,
        starts_in: timedelta = timedelta(minutes=5),
        status: str = "Confirmed",
        payment_status: str = "Paid",
        session_type: str = "Individual",
        is_video_call: bool = True,
    ) -> Booking:
        client_user = await user_factory("client")
        psychologist = await user_factory("psychologist")
        session = await storage.create_session(
            client_id=client_user.id,
            psychologist_id=psychologist.id,
            session_date=clock() + starts_in,
            status=status,
            payment_status=payment_status,
            session_type=session_type,
            is_video_call=is_video_call,
        )
        return Booking(
            session=session,
            client=client_user,
            psychologist=psychologist,
            client_token=make_token(client_user.id, "client"),
            psychologist_token=make_token(psychologist.id, "psychologist"),
            admin_token=make_token(ADMIN_ID, "admin"),
        )

    return factory


@pytest.fixture
def admin_token(make_token: TokenFactory) -> str:
    """A token for an admin that has no user record (tokens are trusted by signature)."""
    return make_token(ADMIN_ID, "admin")
