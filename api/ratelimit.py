"""RATE_LIMIT_API_PER_MIN on the REST face: the middleware, the `X-RateLimit-*` headers and the
429 answer. The limiter itself is a `calls.ratelimit.RateLimit` (in this process, or shared by
the fleet: `cluster.ratelimit.SharedRateLimiter`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from api.auth import try_authenticate
from api.errors import ApiError
from api.keys import API_RATE_LIMITER_KEY
from calls.errors import RATE_LIMITED
from calls.identity import Identity
from calls.ratelimit import RateLimitResult, user_key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths counted against RATE_LIMIT_API_PER_MIN.
API_LIMITED_PREFIX = "/api/video-calls/"


def rate_limit_headers(result: RateLimitResult) -> dict[str, str]:
    headers = {
        "X-RateLimit-Limit": str(result.limit),
        "X-RateLimit-Remaining": str(result.remaining),
        "X-RateLimit-Reset": str(math.ceil(result.reset_at)),
    }
    if not result.allowed:
        headers["Retry-After"] = str(result.retry_after)
    return headers


def rate_limited(result: RateLimitResult, what: str = "requests") -> ApiError:
    """The 429 answer in the envelope, with the rate-limit headers."""
    return ApiError(
        429,
        RATE_LIMITED,
        f"Too many {what}: at most {result.limit} per minute; retry in {result.retry_after} s",
        {"limit": result.limit, "retryAfter": result.retry_after},
        headers=rate_limit_headers(result),
    )


def rate_limit_key(identity: Identity | None, request: web.Request) -> str:
    """Per user when the token is valid, else per client address."""
    if identity is not None:
        return user_key(identity.user_id)
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
    result = await limiter.hit(rate_limit_key(try_authenticate(request), request))
    if not result.allowed:
        raise rate_limited(result)
    headers = rate_limit_headers(result)
    try:
        response = await handler(request)
    except ApiError as exc:
        exc.headers = {**headers, **exc.headers}
        raise
    response.headers.update(headers)
    return response
