"""The sliding-window rate limiter (calls/ratelimit.py), and the `X-RateLimit-*` headers the
REST face renders from its results (api/ratelimit.py)."""

from __future__ import annotations

from api.ratelimit import rate_limit_headers
from calls.ratelimit import RateLimiter


class Seconds:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_sliding_window() -> None:
    t = Seconds()
    limiter = RateLimiter(3, 60, clock=t)
    results = [await limiter.hit("u") for _ in range(3)]
    assert [r.remaining for r in results] == [2, 1, 0]
    assert all(r.allowed for r in results)
    t.now += 10
    refused = await limiter.hit("u")
    assert not refused.allowed
    assert refused.retry_after == 50
    assert rate_limit_headers(refused)["Retry-After"] == "50"
    assert rate_limit_headers(refused)["X-RateLimit-Reset"] == str(1_000_000 + 60)
    assert (await limiter.hit("other")).allowed  # keys are independent
    t.now += 50  # the three first hits leave the window together
    assert [(await limiter.hit("u")).allowed for _ in range(4)] == [True, True, True, False]
    assert (await limiter.peek("u")).remaining == 0


async def test_disabled_when_zero() -> None:
    limiter = RateLimiter(0)
    assert all([(await limiter.hit("u")).allowed for _ in range(1000)])


async def test_idle_keys_are_swept() -> None:
    t = Seconds()
    limiter = RateLimiter(5, 60, clock=t)
    for i in range(2000):
        await limiter.hit(f"k{i}")
    t.now += 120
    for i in range(1100):
        await limiter.hit(f"fresh{i}")
    # the sweep at the 2048th hit (1024 hits apart) dropped every idle key, and only those
    assert set(limiter._hits) == {f"fresh{i}" for i in range(1100)}
