"""Fixtures for media tests: a network namespace, the real app on a real port, aiortc clients."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.sfu import Relay
from smiling_relay.app import RELAY_KEY
from smiling_relay.config import Config
from storage.base import Storage
from synth import netns
from synth.client import CallClient
from tests.conftest import AppFactory
from tests.helpers import Booking, BookingFactory
from tests.relay.helpers import open_room

ClientMaker = Callable[..., Awaitable[CallClient]]
# synth.netns.ADDR_A/ADDR_B, and synth.impair's client namespaces (10.213.N.0/24)
NAMESPACE_RANGES = ("10.77.0.0/24", "10.213.0.0/16")


@pytest.fixture(scope="session", autouse=True)
def media_netns() -> netns.Netns:
    """Every test in this folder (not the unit tier beside it) runs inside a namespace of its
    own (see synth/netns.py)."""
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return netns.enter_process_netns()


@pytest.fixture
def config(config: Config) -> Config:
    """The relay may check the namespace's private addresses (RELAY_ALLOWED_PEER_RANGES)."""
    return dataclasses.replace(config, relay_allowed_peer_ranges=NAMESPACE_RANGES)


@pytest.fixture
async def server(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], make_app: AppFactory
) -> TestServer:
    return await aiohttp_server(make_app())


@pytest.fixture
def relay(server: TestServer) -> Relay:
    return server.app[RELAY_KEY]


@pytest.fixture
async def booked_room(booking_factory: BookingFactory, storage: Storage) -> tuple[Booking, str]:
    """A joinable session (client + psychologist, Confirmed, Paid, starting soon) and its room."""
    booking = await booking_factory()
    return booking, await open_room(storage, booking)


@pytest.fixture
async def make_client(server: TestServer) -> AsyncIterator[ClientMaker]:
    clients: list[CallClient] = []

    async def factory(
        token: str, client_class: type[CallClient] = CallClient, **kwargs: object
    ) -> CallClient:
        client = client_class(str(server.make_url("")), token, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        await client.connect()
        return client

    yield factory
    for client in clients:
        await client.close()
