"""Cross-cutting HTTP behaviour: CORS for the platform's frontend, safe default headers, the
request id, and the bound on how long a request body may take to arrive."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from api.errors import REQUEST_TIMEOUT, ApiError
from calls.log_context import REQUEST_ID

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = [
    "Middleware",
    "body_timeout_middleware",
    "cors_middleware",
    "request_id_middleware",
    "security_headers",
]

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept when it is short and plain (a proxy's or the platform's own), so it
# cannot inject anything into a log line; otherwise the server makes one.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("request_id", str)
# Seconds the whole announced body may take to arrive once the headers are in.
BODY_READ_TIMEOUT = 10.0


_ALLOW_HEADERS = "x-auth-token, authorization, content-type, x-request-id"
_ALLOW_METHODS = "GET, POST, PATCH, OPTIONS"
_EXPOSE_HEADERS = (
    "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After, X-Request-ID"
)


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


def base_security_headers() -> dict[str, str]:
    """The headers every response gets (also answers aiohttp makes before routing)."""
    return {
        "Server": SERVER_NAME,
        "X-Content-Type-Options": "nosniff",
        # Call links carry the token in the query string: never leak it through Referer.
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Frame-Options": "DENY",
        "Permissions-Policy": PERMISSIONS_POLICY,
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def security_headers(*, hsts: bool) -> ResponseHook:
    """An `on_response_prepare` hook: every response gets the headers, WebSocket upgrades and
    static files included (a middleware would miss what is prepared inside the handler).

    `hsts` (production): browsers pin HTTPS for a year; sent even when a TLS proxy in front
    talks plain HTTP to us, since browsers ignore the header on plain-HTTP responses anyway.
    """

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        for name, value in base_security_headers().items():
            if name == "Server":
                headers[name] = value
            elif name != "Cache-Control" or request.path.startswith("/api/"):
                headers.setdefault(name, value)
        if hsts:
            headers.setdefault("Strict-Transport-Security", HSTS)
        request_id = request.get(REQUEST_ID_KEY)
        if request_id is not None:
            headers.setdefault(REQUEST_ID_HEADER, request_id)

    return add_headers


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: the request's id (a sane incoming `X-Request-ID`, else a new one) goes on
    every log line of the request (`calls.log_context`) and back in the response's header."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    REQUEST_ID.set(request_id)  # the request's own task: gone with it, no reset needed
    return await handler(request)


def body_timeout_middleware(timeout: float = BODY_READ_TIMEOUT) -> Middleware:
    """Read an announced body before the handler, within `timeout` seconds: a client that
    announces a body and never sends it gets 408 instead of holding the request open forever.
    The body is kept by aiohttp, so handlers' `request.read()`/`json()` return it at once."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists and not request.content.is_eof():
            try:
                async with asyncio.timeout(timeout):
                    await request.read()
            except TimeoutError:
                raise ApiError(
                    408,
                    REQUEST_TIMEOUT,
                    "The request body did not arrive in time",
                    {"timeoutSeconds": timeout},
                    headers={"Connection": "close"},
                ) from None
        return await handler(request)

    return middleware
