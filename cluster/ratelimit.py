"""Per-user rate limits that hold across the fleet: a `calls.ratelimit.RateLimit` counting in
the `ClusterState` (the SQLite file of one machine's workers, or Redis).

While the state is unreachable the limiter counts in this process instead (an in-process
`RateLimiter` that has seen this process's recent hits all along), so an outage neither lets
everything through nor refuses everyone: each process then enforces the limit on its own share.
After a failure it waits `retry_every` seconds before it asks the state again, so a hung Redis
costs one `socket_timeout` per interval, not one per request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from calls.ratelimit import RateLimiter, RateLimitResult
from cluster.state import ClusterState, Hits, StateUnavailable

log = logging.getLogger(__name__)


class SharedRateLimiter:
    """At most `limit` hits per key within any `window` seconds, counted by every process that
    shares `state` under the same `scope` (e.g. "api", "ws": one budget per scope). A `RateLimit`.
    """

    def __init__(
        self,
        state: ClusterState,
        limit: int,
        window: float = 60.0,
        *,
        scope: str,
        clock: Callable[[], float] = time.time,
        retry_every: float = 1.0,
    ) -> None:
        self.state = state
        self.limit = limit
        self.window = window
        self.scope = scope
        self._clock = clock
        self._retry_every = retry_every
        self._local = RateLimiter(limit, window, clock=clock)
        # While the state is out: when to ask it again (None: it answers).
        self._retry_at: float | None = None

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    @property
    def degraded(self) -> bool:
        """Whether the last answer came from this process alone (the state was unreachable)."""
        return self._retry_at is not None

    async def hit(self, key: str) -> RateLimitResult:
        now = self._clock()
        if not self.enabled:
            return RateLimitResult(True, 0, 0, now, 0)
        if self._state_down(now):
            return await self._local.hit(key)
        try:
            hits = await self.state.hit(self._key(key), self.limit, self.window, now)
        except StateUnavailable as exc:
            self._went_down(now, exc)
            return await self._local.hit(key)
        self._came_back()
        if hits.allowed:
            # the local log follows this process's hits, for the fallback's sake
            await self._local.hit(key)
        return self._result(hits, hits.allowed, now)

    async def peek(self, key: str) -> RateLimitResult:
        now = self._clock()
        if not self.enabled:
            return RateLimitResult(True, 0, 0, now, 0)
        if self._state_down(now):
            return await self._local.peek(key)
        try:
            hits = await self.state.count(self._key(key), self.window, now)
        except StateUnavailable as exc:
            self._went_down(now, exc)
            return await self._local.peek(key)
        self._came_back()
        return self._result(hits, hits.count < self.limit, now)

    def _result(self, hits: Hits, allowed: bool, now: float) -> RateLimitResult:
        retry_after = 0 if allowed else max(1, math.ceil(hits.oldest - now))
        return RateLimitResult(
            allowed, self.limit, max(self.limit - hits.count, 0), hits.oldest, retry_after
        )

    def _key(self, key: str) -> str:
        return f"ratelimit:{self.scope}:{key}"

    def _state_down(self, now: float) -> bool:
        return self._retry_at is not None and now < self._retry_at

    def _went_down(self, now: float, exc: StateUnavailable) -> None:
        if self._retry_at is None:
            log.warning(
                "rate limit %r: the shared state is unreachable (%s); counting in this process",
                self.scope,
                exc,
            )
        self._retry_at = now + self._retry_every

    def _came_back(self) -> None:
        if self._retry_at is not None:
            log.info("rate limit %r: the shared state answers again", self.scope)
            self._retry_at = None
