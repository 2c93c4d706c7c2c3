"""The one exception the domain raises, and the codes it answers with.

A `CallError` carries what both faces need: a stable machine-readable `code`, a human `message`,
`details` for the client, and a `kind` that each face maps to its own wire (an HTTP status for
REST; an error code or close code for the WebSocket where its protocol names things differently).
The refusals are audited by `calls.service` before they are raised.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class ErrorKind(enum.Enum):
    """What sort of refusal: the faces map it (REST: to a status)."""

    INVALID = "invalid"  # the request is malformed (400)
    UNAUTHENTICATED = "unauthenticated"  # no valid token (401)
    FORBIDDEN = "forbidden"  # the caller may not do this now (403)
    NOT_FOUND = "not_found"  # no such session or room (404)
    CONFLICT = "conflict"  # the call's state forbids it (409)
    RATE_LIMITED = "rate_limited"  # over the caller's budget (429)
    UNAVAILABLE = "unavailable"  # the service cannot do it right now, try again (503)


# Codes (documented in docs/api.md and docs/signaling.md).
UNAUTHORIZED = "UNAUTHORIZED"
FORBIDDEN = "FORBIDDEN"
INVALID_SESSION_ID = "INVALID_SESSION_ID"
SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
CALL_NOT_STARTED = "CALL_NOT_STARTED"
CALL_ALREADY_ENDED = "CALL_ALREADY_ENDED"
INVALID_END_TIME = "INVALID_END_TIME"
RATE_LIMITED = "RATE_LIMITED"
ROOM_NOT_FOUND = "ROOM_NOT_FOUND"
ROOM_FULL = "ROOM_FULL"
PERMISSION_DENIED = "PERMISSION_DENIED"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


class CallError(Exception):
    """A refusal by the call service; the faces translate it into their wire format."""

    def __init__(
        self,
        kind: ErrorKind,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __repr__(self) -> str:
        return f"CallError({self.kind.name}, {self.code!r}, {self.message!r})"


def unavailable(message: str, retry_after: int) -> CallError:
    """A refusal the client should retry (placement: draining, full, unreachable)."""
    return CallError(
        ErrorKind.UNAVAILABLE, SERVICE_UNAVAILABLE, message, {"retryAfter": retry_after}
    )
