"""The REST suite's own fixtures: the app served the way `smiling-relay serve` serves it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api.protocol import EnvelopeAppRunner
from smiling_relay.app import create_app
from smiling_relay.config import Config
from storage.base import Storage


class ServedTestServer(TestServer):
    """aiohttp's TestServer, but with the production runner (`api.protocol.EnvelopeAppRunner`)."""

    def __init__(self, app: web.Application, *, header_timeout: float = 15.0) -> None:
        super().__init__(app)
        self._header_timeout = header_timeout

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        # aiohttp's test server cancels handlers of vanished clients; production does not.
        kwargs.pop("handler_cancellation", None)
        return EnvelopeAppRunner(self.app, header_timeout=self._header_timeout, **kwargs)


Served = TestClient[web.Request, web.Application]


class MakeServed(Protocol):
    async def __call__(self, *, header_timeout: float = ..., **overrides: Any) -> Served: ...


@pytest.fixture
async def make_served(config: Config, storage: Storage) -> AsyncIterator[MakeServed]:
    """`await make_served(**config_overrides)`: a client of the real app on the real runner."""
    made: list[Served] = []

    async def factory(*, header_timeout: float = 15.0, **overrides: Any) -> Served:
        app = create_app(dataclasses.replace(config, **overrides), storage)
        client: Served = TestClient(ServedTestServer(app, header_timeout=header_timeout))
        await client.start_server()
        made.append(client)
        return client

    yield factory
    for client in reversed(made):
        await client.close()


@pytest.fixture
async def served(make_served: MakeServed) -> Served:
    return await make_served()
