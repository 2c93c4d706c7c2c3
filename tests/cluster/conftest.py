"""The cluster state's backends, each against its real store: a dict, a SQLite file, a Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.memory_state import MemoryState
from cluster.redis_state import RedisState
from cluster.sqlite_state import SqliteState
from cluster.state import ClusterState
from tests.cluster.redis_server import REDIS_SERVER, RedisServer


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """A backend under test, and how time passes for it."""

    name: str
    state: ClusterState
    # None: Redis, which expires keys by its own (real) clock.
    clock: FakeClock | None
    # A ttl that a test can outlive quickly.
    short_ttl: float

    async def outlive(self, condition: Callable[[], Awaitable[bool]], what: str) -> None:
        """Let `short_ttl` pass, then `condition` must hold: at once on the fake clock, within
        a bounded wait on Redis's."""
        if self.clock is not None:
            self.clock.advance(self.short_ttl + 0.001)
            assert await condition(), what
            return
        await until(condition, what, within=self.short_ttl + 3.0)


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    """Poll the async `condition` until it holds; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    clock = FakeClock()
    state: ClusterState
    if request.param == "memory":
        made = Backend("memory", MemoryState(clock=clock), clock, 10.0)
    elif request.param == "sqlite":
        made = Backend("sqlite", SqliteState(tmp_path / "cluster.db", clock=clock), clock, 10.0)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = Backend("redis", RedisState(server.url), None, 0.3)
    state = made.state
    try:
        yield made
    finally:
        await state.close()
