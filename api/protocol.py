"""The HTTP connection level: what happens before (or outside) the app's middlewares.

aiohttp answers some requests itself, before routing: a header over 8,190 bytes, a malformed
request line, a bad chunked body. Its `RequestHandler.handle_error` answers those with plain
text and logs each with an ERROR traceback, although the mistake is the client's. aiohttp has no
public hook for that answer (`on_response_prepare` only runs for routed requests), so
`EnvelopeAppRunner` serves the app with `EnvelopeRequestHandler`, whose `handle_error` answers
with the envelope (and the security headers) and logs a client's mistake as one INFO line.

The runner also bounds the time a connection may take to send its request headers: aiohttp's
keep-alive timer runs from the moment a connection opens (and after each response) and closes a
connection that has not completed a request by then, so `keepalive_timeout` is that bound. And
it replaces aiohttp's access log with `AccessLog`: one line per request with method, canonical
route (no ids), status, duration and request id, as fields a JSON log keeps.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler

from api.errors import BAD_REQUEST, INTERNAL_ERROR, error_body
from api.middleware import REQUEST_ID_HEADER, base_security_headers

log = logging.getLogger(__name__)
access_log = logging.getLogger("smiling_relay.access")

# Seconds a connection gets to send complete request headers (from connect, or from the last
# response on a kept-alive connection); also how long an idle kept-alive connection stays open.
HEADER_TIMEOUT = 15.0
UNMATCHED_ROUTE = "unmatched"
_STATUS_CODES = {400: BAD_REQUEST, 413: "PAYLOAD_TOO_LARGE", 431: BAD_REQUEST}
_MESSAGES = {
    400: "Malformed HTTP request",
    413: "Request too large",
    431: "Request headers too large",
    500: "Internal server error",
    504: "The request took too long",
}


class EnvelopeRequestHandler(RequestHandler):
    """aiohttp's connection handler, but errors outside the app answer with the envelope."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:  # an exception escaped the app: a bug, worth its traceback
            self.logger.error(
                "error handling request from %s", request.remote, exc_info=exc or True
            )
        else:  # the client's mistake: one line, no traceback
            log.info("refused a malformed request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:  # the same rule as aiohttp's: too late to answer
            raise ConnectionError("Response is sent already, cannot send an error response")
        code = _STATUS_CODES.get(status, INTERNAL_ERROR if status >= 500 else BAD_REQUEST)
        details = {"reason": str(message)[:200]} if message and status < 500 else {}
        text = _MESSAGES.get(status, "Request failed")
        headers = base_security_headers()
        headers[REQUEST_ID_HEADER] = uuid.uuid4().hex
        response = web.json_response(
            error_body(code, text, details), status=status, headers=headers
        )
        response.force_close()
        return response


class _EnvelopeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class EnvelopeAppRunner(web.AppRunner):
    """`web.AppRunner` with `EnvelopeRequestHandler`, `AccessLog` and the header deadline.

    Keyword arguments go to `web.AppRunner` (and on to aiohttp's `RequestHandler`).
    """

    def __init__(
        self, app: web.Application, *, header_timeout: float = HEADER_TIMEOUT, **kwargs: Any
    ) -> None:
        kwargs.setdefault("access_log_class", AccessLog)
        kwargs.setdefault("access_log", access_log)
        kwargs.setdefault("keepalive_timeout", header_timeout)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        # The app's own server (its startup ran), rebuilt with our handler class: aiohttp has
        # no parameter for the class, so this reads the two attributes it was built from.
        server = await super()._make_server()
        return _EnvelopeServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


def route_of(request: web.BaseRequest) -> str:
    """The matched route's canonical path (`/api/video-calls/end/{sessionId}`), never the raw
    path, so an access line names no ids; `unmatched` otherwise."""
    # `Request.match_info` asserts it was resolved; requests aiohttp refused before routing
    # (and low-level `BaseRequest`s) have none, hence the attribute itself.
    match_info = getattr(request, "_match_info", None)
    if match_info is None:
        return UNMATCHED_ROUTE
    resource = match_info.route.resource
    return (resource.canonical if resource is not None else None) or UNMATCHED_ROUTE


class AccessLog(AbstractAccessLogger):
    """One INFO line per request on `smiling_relay.access`, its facts as `extra=` fields."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = route_of(request)
        self.logger.info(
            "%s %s %d %.1fms",
            request.method,
            route,
            response.status,
            time * 1000,
            extra={
                "method": request.method,
                "route": route,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                "request_id": response.headers.get(REQUEST_ID_HEADER),
            },
        )
