"""Audit logging of every access attempt, allowed or refused (`videocallauditlogs`).

Shared by the REST handlers and the WebSocket side. A failing audit write is logged loudly
but never turns an otherwise valid answer into an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from calls.identity import Identity
from storage.base import AuditEntry, Storage, is_object_id

log = logging.getLogger(__name__)

ALLOWED = "allowed"
DENIED = "denied"
ERROR = "error"

_MAX_USER_AGENT = 512


def client_address(request: web.BaseRequest) -> str | None:
    return request.remote


def user_agent(request: web.BaseRequest) -> str | None:
    agent = request.headers.get("User-Agent")
    return agent[:_MAX_USER_AGENT] if agent else None


async def record_access(
    storage: Storage,
    *,
    action: str,
    result: str,
    identity: Identity | None,
    session_id: str | None,
    reason: str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    room_id: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    duration: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Write one audit entry; never raises (a lost entry is logged as an error)."""
    entry = AuditEntry(
        action=action,
        result=result,
        timestamp=now or datetime.now(UTC),
        # Only well-formed ids are stored as references; a garbage id is kept in metadata.
        session_id=session_id if is_object_id(session_id) else None,
        user_id=identity.user_id if identity else None,
        role=identity.role if identity else None,
        reason=reason,
        ip_address=ip_address,
        user_agent=user_agent,
        room_id=room_id,
        error_code=error_code
        if error_code is not None
        else (reason if result != ALLOWED else None),
        error_message=error_message,
        duration=duration,
        metadata={
            **(metadata or {}),
            **(
                {"rawSessionId": session_id[:64]}
                if session_id and not is_object_id(session_id)
                else {}
            ),
        },
    )
    try:
        await storage.add_audit(entry)
    except Exception:
        log.exception(
            "audit entry lost: action=%s result=%s user=%s session=%s reason=%s",
            action,
            result,
            entry.user_id,
            entry.session_id,
            reason,
        )


async def record_request_access(
    request: web.Request,
    storage: Storage,
    *,
    action: str,
    result: str,
    identity: Identity | None,
    session_id: str | None,
    now: datetime,
    reason: str | None = None,
    room_id: str | None = None,
    error_message: str | None = None,
    duration: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """`record_access` with the client address, user agent and endpoint taken from `request`."""
    await record_access(
        storage,
        action=action,
        result=result,
        identity=identity,
        session_id=session_id,
        reason=reason,
        ip_address=client_address(request),
        user_agent=user_agent(request),
        room_id=room_id,
        error_message=error_message,
        duration=duration,
        metadata={"endpoint": f"{request.method} {_route_name(request)}", **(metadata or {})},
        now=now,
    )


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path
