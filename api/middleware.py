"""Cross-cutting HTTP behaviour: CORS for the platform's frontend, and safe default headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["Middleware", "cors_middleware", "security_headers_middleware"]

_ALLOW_HEADERS = "x-auth-token, authorization, content-type"
_ALLOW_METHODS = "GET, POST, PATCH, OPTIONS"
_EXPOSE_HEADERS = "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After"


def cors_middleware(origins: tuple[str, ...]) -> Middleware:
    """Allow the configured origins (`CORS_ORIGIN`, comma-separated; `*` allows any)."""
    allow_any = "*" in origins
    allowed = frozenset(o.rstrip("/") for o in origins)

    def origin_allowed(origin: str) -> bool:
        return allow_any or origin.rstrip("/") in allowed

    def add_headers(response: web.StreamResponse, origin: str) -> None:
        response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else origin
        response.headers["Access-Control-Expose-Headers"] = _EXPOSE_HEADERS
        if not allow_any:
            response.headers.add("Vary", "Origin")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        is_preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if is_preflight and origin is not None:
            preflight = web.Response(status=204)
            if origin_allowed(origin):
                add_headers(preflight, origin)
                preflight.headers["Access-Control-Allow-Methods"] = _ALLOW_METHODS
                preflight.headers["Access-Control-Allow-Headers"] = _ALLOW_HEADERS
                preflight.headers["Access-Control-Max-Age"] = "600"
            return preflight
        response = await handler(request)
        if origin is not None and origin_allowed(origin) and not response.prepared:
            add_headers(response, origin)
        return response

    return middleware


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if response.prepared:  # WebSocket upgrades and streamed files already sent their headers
        return response
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # Call links carry the token in the query string: never leak it through Referer.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response
