"""Cross-cutting HTTP behaviour: CORS for the platform's frontend, and safe default headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["Middleware", "cors_middleware", "security_headers"]

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


# The browser client is plain ES modules from /static/: no inline script or style, no eval,
# no framing. Media elements show MediaStreams (no URLs), the favicon is a data: URL.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' mediastream: blob:",
        "connect-src 'self'",  # CSP 3: 'self' covers ws:/wss: to the same host as well
        "font-src 'self'",
        "worker-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PERMISSIONS_POLICY = (
    "camera=(self), microphone=(self), display-capture=(self), geolocation=(), payment=(), "
    "usb=(), serial=()"
)
HSTS = "max-age=31536000; includeSubDomains"
SERVER_NAME = "smiling-relay"  # not aiohttp's "Python/3.x aiohttp/3.x"

ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def security_headers(*, hsts: bool) -> ResponseHook:
    """An `on_response_prepare` hook: every response gets the headers, WebSocket upgrades and
    static files included (a middleware would miss what is prepared inside the handler).

    `hsts` (production): browsers pin HTTPS for a year; sent even when a TLS proxy in front
    talks plain HTTP to us, since browsers ignore the header on plain-HTTP responses anyway.
    """

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers["Server"] = SERVER_NAME
        headers.setdefault("X-Content-Type-Options", "nosniff")
        # Call links carry the token in the query string: never leak it through Referer.
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if hsts:
            headers.setdefault("Strict-Transport-Security", HSTS)
        if request.path.startswith("/api/"):
            headers.setdefault("Cache-Control", "no-store")

    return add_headers
