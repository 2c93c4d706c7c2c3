"""`SharedRateLimiter`: one per-user budget across every process sharing the cluster state, and
a per-process budget while that state is out (never everyone through, never everyone refused)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from calls.ratelimit import RateLimit, RateLimiter
from cluster.memory_state import MemoryState
from cluster.ratelimit import SharedRateLimiter
from cluster.redis_state import RedisState
from cluster.sqlite_state import SqliteState
from tests.cluster.conftest import FakeClock
from tests.cluster.redis_server import RedisServer


async def test_two_workers_share_one_budget_on_one_file(tmp_path: Path) -> None:
    clock = FakeClock()
    # two workers: each its own state instance on the machine's file, its own limiter
    states = [SqliteState(tmp_path / "c.db", clock=clock) for _ in range(2)]
    a, b = (SharedRateLimiter(s, 3, 60, scope="ws", clock=clock) for s in states)
    try:
        assert [(await a.hit("user:x")).remaining for _ in range(2)] == [2, 1]
        last = await b.hit("user:x")
        assert (last.allowed, last.remaining) == (True, 0)
        clock.advance(10)
        refused = await a.hit("user:x")
        assert (refused.allowed, refused.remaining, refused.retry_after) == (False, 0, 50)
        assert refused.reset_at == clock.now - 10 + 60
        assert not (await b.hit("user:x")).allowed
        assert (await b.peek("user:x")).remaining == 0
        assert not (await b.peek("user:x")).allowed
        assert (await a.hit("user:y")).allowed  # per key
        clock.advance(50)  # the first hits leave the window
        assert (await b.peek("user:x")).remaining == 3
        assert (await b.hit("user:x")).allowed
        assert not a.degraded and not b.degraded
    finally:
        for state in states:
            await state.close()


async def test_scopes_are_separate_budgets() -> None:
    state = MemoryState()
    api = SharedRateLimiter(state, 1, 60, scope="api")
    ws = SharedRateLimiter(state, 1, 60, scope="ws")
    assert (await api.hit("user:x")).allowed
    assert (await ws.hit("user:x")).allowed  # the same user, another budget
    assert not (await api.hit("user:x")).allowed


async def test_answers_like_the_in_process_limiter() -> None:
    clock = FakeClock()
    shared = SharedRateLimiter(MemoryState(clock=clock), 3, 60, scope="api", clock=clock)
    local = RateLimiter(3, 60, clock=clock)
    limiters: list[RateLimit] = [shared, local]
    for step in (0, 1, 1, 5, 20, 40, 1, 0):
        clock.advance(step)
        hits = [await limiter.hit("u") for limiter in limiters]
        assert hits[0] == hits[1], step
        peeks = [await limiter.peek("u") for limiter in limiters]
        assert peeks[0] == peeks[1], step


async def test_disabled_when_zero(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "c.db")
    limiter = SharedRateLimiter(state, 0, scope="ws")
    try:
        assert not limiter.enabled
        assert all([(await limiter.hit("u")).allowed for _ in range(10)])
        assert (await limiter.peek("u")).allowed
        assert (await state.count("ratelimit:ws:u", 60, 1e10)).count == 0  # nothing stored
    finally:
        await state.close()


async def test_an_outage_falls_back_to_this_process_then_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    state = RedisState(redis_server.url)
    other = RedisState(redis_server.url)
    limiter = SharedRateLimiter(state, 3, 60, scope="ws", clock=clock, retry_every=5)
    elsewhere = SharedRateLimiter(other, 3, 60, scope="ws", clock=clock)
    try:
        assert (await limiter.hit("user:x")).allowed
        assert (await elsewhere.hit("user:x")).allowed
        redis_server.kill()
        with caplog.at_level(logging.WARNING, logger="cluster.ratelimit"):
            # this process counted one hit before the outage: two more, then refused
            during = [(await limiter.hit("user:x")).allowed for _ in range(4)]
            assert during == [True, True, False, False]
            assert (await limiter.peek("user:x")).remaining == 0
            assert (await limiter.hit("user:y")).allowed  # not everyone refused
            clock.advance(6)  # past retry_every: the state is asked again, still out
            assert not (await limiter.hit("user:x")).allowed
        assert limiter.degraded
        warnings = [r for r in caplog.records if r.name == "cluster.ratelimit"]
        assert len(warnings) == 1, "one warning per outage"
        assert "unreachable" in warnings[0].getMessage()

        redis_server.start()  # back, empty
        clock.advance(1)  # within retry_every: still counting here
        assert not (await limiter.hit("user:x")).allowed
        assert limiter.degraded
        clock.advance(5)
        assert (await limiter.hit("user:x")).allowed  # the shared budget again (it was lost)
        assert not limiter.degraded
        assert (await elsewhere.peek("user:x")).remaining == 2  # and the other worker sees it
    finally:
        await state.close()
        await other.close()
