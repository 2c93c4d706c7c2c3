"""In-memory per-user rate limiting (sliding window log).

The platform's API reference: 10 requests/minute per user on the video-call endpoints and
3 WebSocket connections/minute per user. A sliding log is exact at the window's edge (a fixed
window would allow 2x the limit across a boundary) and cheap at these small limits. State is
per process; behind several instances the effective limit multiplies, which the deployment
notes say.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from api.auth import try_authenticate
from api.errors import RATE_LIMITED, ApiError
from calls.identity import Identity
from smiling_relay.appkeys import API_RATE_LIMITER_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths counted against RATE_LIMIT_API_PER_MIN.
API_LIMITED_PREFIX = "/api/video-calls/"
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

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def to_error(self, what: str = "requests") -> ApiError:
        """The 429 answer in the envelope, with the rate-limit headers."""
        return ApiError(
            429,
            RATE_LIMITED,
            f"Too many {what}: at most {self.limit} per minute; retry in {self.retry_after} s",
            {"limit": self.limit, "retryAfter": self.retry_after},
            headers=self.headers(),
        )


class RateLimiter:
    """At most `limit` hits per key within any `window` seconds. `limit <= 0` disables it."""

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

    def hit(self, key: str) -> RateLimitResult:
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

    def peek(self, key: str) -> RateLimitResult:
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


def rate_limit_key(identity: Identity | None, request: web.Request) -> str:
    """Per user when the token is valid, else per client address."""
    if identity is not None:
        return f"user:{identity.user_id}"
    return f"ip:{request.remote or 'unknown'}"


@web.middleware
async def api_rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply RATE_LIMIT_API_PER_MIN to /api/video-calls/* and add X-RateLimit-* headers."""
    limiter = request.app.get(API_RATE_LIMITER_KEY)
    if (
        limiter is None
        or not limiter.enabled
        or request.method == "OPTIONS"
        or not request.path.startswith(API_LIMITED_PREFIX)
    ):
        return await handler(request)
    result = limiter.hit(rate_limit_key(try_authenticate(request), request))
    if not result.allowed:
        raise result.to_error()
    try:
        response = await handler(request)
    except ApiError as exc:
        exc.headers = {**result.headers(), **exc.headers}
        raise
    response.headers.update(result.headers())
    return response
