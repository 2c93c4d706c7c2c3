"""`GET /metrics` and the middleware that times REST requests.

The middleware is installed outermost, so it sees the final status (after the API's error
middleware turned exceptions into the envelope) and the full handling time. It labels requests
with the route's canonical path (`/api/video-calls/can-join/{sessionId}`), never the raw path,
so ids never become label values. Unmatched paths share the route label `unmatched`. WebSocket
connections (`/ws`) are not timed: their "duration" is the length of the connection.

Error responses (status ≥ 400) are counted in `smiling_relay_errors_total{source="api"}` by the
envelope's `error.code` (or `HTTP_<status>` when the body is not the envelope), so REST handlers
need no metrics call of their own.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from metrics.keys import METRICS_KEY

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNMATCHED_ROUTE = "unmatched"
# The classic text format: every Prometheus 2.x parses it (our names are all legacy-valid, so
# prometheus-client's output is the same under 0.0.4 and 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_ERROR_BODY = 64 * 1024
CLIENT_CLOSED_REQUEST = 499  # nginx's convention for a request the client abandoned


def route_label(request: web.Request) -> str:
    """The matched route's canonical path, or `unmatched`."""
    try:
        route = request.match_info.route
    except Exception:  # match_info not resolved (failure before routing)
        return UNMATCHED_ROUTE
    resource = route.resource
    if resource is None:
        return UNMATCHED_ROUTE
    canonical = resource.canonical
    return canonical or UNMATCHED_ROUTE


def error_code_of(response: Any, status: int) -> str:
    """`error.code` of an envelope body, else `HTTP_<status>`."""
    body = getattr(response, "body", None)
    content_type = getattr(response, "content_type", "")
    if (
        isinstance(body, bytes | bytearray)
        and len(body) <= MAX_ERROR_BODY
        and (content_type == "application/json" or body[:1] == b"{")
    ):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict) and isinstance(error.get("code"), str):
                return str(error["code"])
    return f"HTTP_{status}"


@web.middleware
async def request_metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.config_dict.get(METRICS_KEY)
    if metrics is None:
        return await handler(request)
    started = time.perf_counter()
    status = 500
    outcome: Any = None
    websocket = False
    try:
        response = await handler(request)
        status = response.status
        outcome = response
        websocket = isinstance(response, web.WebSocketResponse)
        return response
    except web.HTTPException as exc:
        status = exc.status
        outcome = exc
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED_REQUEST
        raise
    finally:
        if not websocket:
            try:
                metrics.instruments.observe_request(
                    route_label(request), request.method, status, time.perf_counter() - started
                )
                if status >= 400 and status != CLIENT_CLOSED_REQUEST:
                    metrics.count_error(error_code_of(outcome, status), "api")
            except Exception:  # metrics must never break a request
                log.exception("recording request metrics failed")


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    """Prometheus text exposition of this app's registry."""
    metrics = request.config_dict[METRICS_KEY]
    if metrics.auth_token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), metrics.auth_token.encode()
        ):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    # Collected on the event loop on purpose: the relay's counters are only ever touched there.
    body = generate_latest(metrics.registry)
    response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression(web.ContentCoding.gzip)
    return response
