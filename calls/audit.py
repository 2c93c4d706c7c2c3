"""The audit log of every access attempt, allowed or refused (`videocallauditlogs`).

One entry point, `AuditLog.record`, used by `calls.service` for REST and WebSocket alike; the faces
describe where a request came from with an `Origin`. A failing audit write is logged loudly but
never turns an otherwise valid answer into an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from calls.identity import Identity
from storage.base import AuditEntry, Storage, is_object_id

log = logging.getLogger(__name__)

ALLOWED = "allowed"
DENIED = "denied"
ERROR = "error"

MAX_USER_AGENT = 512


@dataclass(frozen=True)
class Origin:
    """Where an attempt came from, as its face saw it.

    `endpoint` names the route (`GET /api/video-calls/can-join/{sessionId}`, `WS join-room`);
    `socket_id` is the WebSocket connection's id (None for REST).
    """

    ip_address: str | None
    user_agent: str | None
    endpoint: str
    socket_id: str | None = None

    def metadata(self) -> dict[str, Any]:
        if self.socket_id is None:
            return {"endpoint": self.endpoint}
        return {"endpoint": self.endpoint, "socketId": self.socket_id}


class AuditLog:
    """Writes audit entries to `storage`."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def record(
        self,
        *,
        action: str,
        result: str,
        origin: Origin,
        identity: Identity | None,
        session_id: str | None,
        now: datetime,
        reason: str | None = None,
        room_id: str | None = None,
        error_message: str | None = None,
        duration: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Write one entry; never raises (a lost entry is logged as an error)."""
        agent = origin.user_agent
        entry = AuditEntry(
            action=action,
            result=result,
            timestamp=now,
            # Only well-formed ids are stored as references; a garbage id is kept in metadata.
            session_id=session_id if is_object_id(session_id) else None,
            user_id=identity.user_id if identity else None,
            role=identity.role if identity else None,
            reason=reason,
            ip_address=origin.ip_address,
            user_agent=agent[:MAX_USER_AGENT] if agent else None,
            room_id=room_id,
            error_code=reason if result != ALLOWED else None,
            error_message=error_message,
            duration=duration,
            metadata={
                **origin.metadata(),
                **(metadata or {}),
                **(
                    {"rawSessionId": session_id[:64]}
                    if session_id and not is_object_id(session_id)
                    else {}
                ),
            },
        )
        try:
            await self._storage.add_audit(entry)
        except Exception:
            log.exception(
                "audit entry lost: action=%s result=%s user=%s session=%s reason=%s",
                action,
                result,
                entry.user_id,
                entry.session_id,
                reason,
            )
