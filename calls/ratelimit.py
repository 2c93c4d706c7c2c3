"""In-memory per-user rate limiting (sliding window log).

The platform's API reference: 10 requests/minute per user on the video-call endpoints and
3 WebSocket connections/minute per user. A sliding log is exact at the window's edge (a fixed
window would allow 2x the limit across a boundary) and cheap at these small limits.

The faces see a `RateLimit`: `RateLimiter` here counts in this process; the fleet's
`cluster.ratelimit.SharedRateLimiter` counts in the shared state (every worker and node), so a
per-user limit holds however many processes serve the user. How a refusal looks on the wire (429
and `X-RateLimit-*` headers, a WebSocket error) is the faces' business.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# Sweep idle keys after this many hits so memory stays bounded under many distinct callers.
_SWEEP_EVERY = 1024


@dataclass(frozen=True)
class RateLimitResult:
    allowed: bool
    limit: int
    remaining: int
    # Unix time (seconds) when the oldest counted hit leaves the window.
    reset_at: float
    # Seconds to wait before a retry can succeed (0 when allowed).
    retry_after: int


class RateLimit(Protocol):
    """At most `limit` hits per key within a sliding window; `limit <= 0` disables it."""

    @property
    def limit(self) -> int: ...

    @property
    def enabled(self) -> bool: ...

    async def hit(self, key: str) -> RateLimitResult:
        """Count one attempt for `key` if within budget; say whether it is allowed."""
        ...

    async def peek(self, key: str) -> RateLimitResult:
        """The current budget for `key` without counting a hit."""
        ...


class RateLimiter:
    """At most `limit` hits per key within any `window` seconds, counted in this process.
    `limit <= 0` disables it. A `RateLimit`."""

    def __init__(
        self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._since_sweep = 0

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    async def hit(self, key: str) -> RateLimitResult:
        """Count one attempt for `key` if within budget; say whether it is allowed."""
        now = self._clock()
        if not self.enabled:
            return RateLimitResult(True, 0, 0, now, 0)
        self._maybe_sweep(now)
        hits = self._hits.setdefault(key, deque())
        self._expire(hits, now)
        if len(hits) >= self.limit:
            reset_at = hits[0] + self.window
            return RateLimitResult(
                False, self.limit, 0, reset_at, max(1, math.ceil(reset_at - now))
            )
        hits.append(now)
        return RateLimitResult(True, self.limit, self.limit - len(hits), hits[0] + self.window, 0)

    async def peek(self, key: str) -> RateLimitResult:
        """The current budget for `key` without counting a hit."""
        now = self._clock()
        hits = self._hits.get(key, deque())
        self._expire(hits, now)
        remaining = max(self.limit - len(hits), 0)
        reset_at = hits[0] + self.window if hits else now
        allowed = remaining > 0 or not self.enabled
        retry = 0 if allowed else max(1, math.ceil(reset_at - now))
        return RateLimitResult(allowed, self.limit, remaining, reset_at, retry)

    def _expire(self, hits: deque[float], now: float) -> None:
        while hits and hits[0] <= now - self.window:
            hits.popleft()

    def _maybe_sweep(self, now: float) -> None:
        self._since_sweep += 1
        if self._since_sweep < _SWEEP_EVERY:
            return
        self._since_sweep = 0
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window]:
            del self._hits[key]


def user_key(user_id: str) -> str:
    """The budget key of an authenticated user (shared by both faces' limiters)."""
    return f"user:{user_id}"
