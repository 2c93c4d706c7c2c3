"""The seed's error envelope and the middleware that guarantees every error uses it.

    {"success": false, "error": {"code", "message", "details", "timestamp"}}

Codes are stable and machine-readable; messages are for humans and may change. Internal
failures are logged with their traceback but answered with a generic message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.keys import SERVICE_KEY
from calls.client_json import ClientJsonError, load_client_json
from calls.errors import FORBIDDEN, RATE_LIMITED, UNAUTHORIZED, CallError, ErrorKind
from storage.base import StorageError, format_datetime

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The error codes of the REST face (documented in docs/api.md); the domain's own (UNAUTHORIZED,
# SESSION_NOT_FOUND, CALL_NOT_STARTED, …) are in `calls.errors`.
INVALID_USER_ID = "INVALID_USER_ID"
INVALID_JSON = "INVALID_JSON"
VALIDATION_ERROR = "VALIDATION_ERROR"
BAD_REQUEST = "BAD_REQUEST"
NOT_FOUND = "NOT_FOUND"
USER_NOT_FOUND = "USER_NOT_FOUND"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
EMAIL_TAKEN = "EMAIL_TAKEN"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
INTERNAL_ERROR = "INTERNAL_ERROR"
REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"

_HTTP_CODES = {
    400: BAD_REQUEST,
    401: UNAUTHORIZED,
    403: FORBIDDEN,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    408: REQUEST_TIMEOUT,
    413: PAYLOAD_TOO_LARGE,
    429: RATE_LIMITED,
}
# How the domain's refusals map to HTTP.
_KIND_STATUS = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.UNAVAILABLE: 503,
}
# nginx's status for a request whose client went away before the answer (never sent; it is
# what the access log and the metrics record, so a client's abort never counts as a 500).
CLIENT_CLOSED_REQUEST = 499
# Headers of aiohttp's own HTTP exceptions worth keeping (e.g. `Allow` on a 405).
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


class ApiError(Exception):
    """Raise from a handler to answer with the envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.headers: dict[str, str] = dict(headers or {})

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def from_call_error(exc: CallError) -> ApiError:
    """The envelope answer for a refusal of the call service."""
    return ApiError(_KIND_STATUS[exc.kind], exc.code, exc.message, exc.details)


def error_body(
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The envelope as a dict (also used for WebSocket `error` events' shape)."""
    return {
        "success": False,
        "error": {
            "code": code,
            "message": message,
            "details": dict(details or {}),
            "timestamp": format_datetime(now or datetime.now(UTC)),
        },
    }


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> web.Response:
    return web.json_response(
        error_body(code, message, details, now=now), status=status, headers=headers
    )


def api_error_response(exc: ApiError, *, now: datetime | None = None) -> web.Response:
    return error_response(
        exc.status, exc.code, exc.message, exc.details, headers=exc.headers, now=now
    )


def ok(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """The success envelope: `{"success": true, "data": …}`."""
    return web.json_response({"success": True, "data": data}, status=status, headers=headers)


def _now(request: web.Request) -> datetime:
    service = request.app.get(SERVICE_KEY)
    return service.clock() if service is not None else datetime.now(UTC)


def _from_http_exception(exc: web.HTTPException) -> tuple[str, str]:
    code = _HTTP_CODES.get(exc.status, INTERNAL_ERROR if exc.status >= 500 else BAD_REQUEST)
    if exc.status == 404:
        return code, "No such endpoint"
    if exc.status == 405:
        return code, "Method not allowed on this endpoint"
    if exc.status == 413:
        return code, "Request body too large"
    return code, exc.reason or "Request failed"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the envelope; never leak a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return api_error_response(exc, now=_now(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and friends are not errors
        code, message = _from_http_exception(exc)
        headers = {h: exc.headers[h] for h in _KEPT_HEADERS if h in exc.headers}
        return error_response(exc.status, code, message, headers=headers, now=_now(request))
    except StorageError:
        log.exception("storage failure on %s %s", request.method, request.path)
        return error_response(
            503, SERVICE_UNAVAILABLE, "Storage is unavailable; try again", now=_now(request)
        )
    except ConnectionResetError:
        if not _client_gone(request):
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, INTERNAL_ERROR, "Internal server error", now=_now(request))
        log.info("client closed the request on %s %s", request.method, request.path)
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, INTERNAL_ERROR, "Internal server error", now=_now(request))


def _client_gone(request: web.Request) -> bool:
    """The client's connection is closed: reading its body raised, not our code."""
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def call_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Innermost: a `CallError` from the service becomes an `ApiError`, so the middlewares
    around it (rate-limit headers, the envelope) treat both alike."""
    try:
        return await handler(request)
    except CallError as exc:
        raise from_call_error(exc) from None


async def read_json_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object; 400 INVALID_JSON otherwise.

    With `required=False` an empty body reads as `{}` (e.g. `end` takes an optional body).
    """
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, INVALID_JSON, "A JSON object body is required")
        return {}
    try:
        value = load_client_json(raw)
    except ClientJsonError as exc:
        raise ApiError(
            400, INVALID_JSON, "Request body is not valid JSON", {"error": str(exc)}
        ) from None
    if not isinstance(value, dict):
        raise ApiError(400, INVALID_JSON, "Request body must be a JSON object")
    return value
