"""The seed's video-call REST API: `/api/video-calls/*`, same paths and response shapes.

Every handler authenticates, validates its input, decides through `api.access.evaluate_access`
and writes an audit entry for the attempt, allowed or refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from api import access
from api.access import AccessDecision, evaluate_access
from api.audit import ALLOWED, DENIED, record_request_access
from api.auth import authenticate
from api.errors import (
    CALL_ALREADY_ENDED,
    CALL_NOT_STARTED,
    INVALID_END_TIME,
    SESSION_NOT_FOUND,
    ApiError,
    ok,
    read_json_object,
)
from api.ice import ice_servers
from api.validation import (
    FieldErrors,
    pagination,
    parse_timestamp,
    session_id_param,
    unknown_fields,
)
from api.views import call_fields_json, history_item_json, iso, participants_json, session_json
from calls.identity import Identity
from smiling_relay.appkeys import CONFIG_KEY, STORAGE_KEY
from storage.base import SessionRecord, Storage, call_duration_minutes

routes = web.RouteTableDef()

# Refusals that still let a participant prepare the room ahead of the join window.
_ROOM_PREPARABLE = frozenset({None, access.TOO_EARLY})


@dataclass(frozen=True)
class SessionAccess:
    """A caller who may see the session (participant or admin), at one instant."""

    identity: Identity
    session: SessionRecord
    decision: AccessDecision
    now: datetime


def _storage(request: web.Request) -> Storage:
    return request.app[STORAGE_KEY]


def _now(request: web.Request) -> datetime:
    return request.app[CONFIG_KEY].clock()


async def _deny(
    request: web.Request,
    error: ApiError,
    *,
    identity: Identity | None,
    session_id: str | None,
    reason: str,
    now: datetime,
    action: str = "permission_denied",
) -> ApiError:
    await record_request_access(
        request,
        _storage(request),
        action=action,
        result=DENIED,
        identity=identity,
        session_id=session_id,
        reason=reason,
        error_message=error.message,
        now=now,
    )
    return error


async def _session_access(request: web.Request) -> SessionAccess:
    """Authenticate, validate `:sessionId`, load it and check the caller may see it.

    Refusals (401/400/404/403) are audited before they are raised.
    """
    now = _now(request)
    raw_id = request.match_info["sessionId"]
    try:
        identity = authenticate(request)
    except ApiError as exc:
        reason = str(exc.details.get("reason", exc.code))
        raise await _deny(
            request, exc, identity=None, session_id=raw_id, reason=reason, now=now
        ) from None
    try:
        session_id = session_id_param(raw_id)
    except ApiError as exc:
        raise await _deny(
            request, exc, identity=identity, session_id=raw_id, reason=exc.code, now=now
        ) from None
    session = await _storage(request).get_session(session_id)
    decision = evaluate_access(session, identity, now)
    if session is None or not decision.can_view:
        assert decision.error_code is not None and decision.reason is not None
        error = ApiError(
            decision.http_status, decision.error_code, decision.message, {"sessionId": session_id}
        )
        action = "permission_denied" if decision.http_status == 403 else "join_denied"
        raise await _deny(
            request,
            error,
            identity=identity,
            session_id=session_id,
            reason=decision.reason,
            now=now,
            action=action,
        )
    return SessionAccess(identity, session, decision, now)


def _refusal(decision: AccessDecision) -> ApiError:
    """A participant may see the session but not join now: 403 with the reason as code."""
    assert decision.reason is not None
    return ApiError(
        403,
        decision.reason,
        decision.message,
        {
            "reason": decision.reason,
            "sessionStatus": decision.session_status,
            "paymentStatus": decision.payment_status,
            "minutesUntilSession": decision.minutes_until_session,
            "timeWindow": decision.time_window(),
        },
    )


async def _audit_allowed(
    request: web.Request, ctx: SessionAccess, action: str, **extra: Any
) -> None:
    await record_request_access(
        request,
        _storage(request),
        action=action,
        result=ALLOWED,
        identity=ctx.identity,
        session_id=ctx.session.id,
        now=ctx.now,
        room_id=ctx.session.meeting_link,
        **extra,
    )


# -- endpoints ----------------------------------------------------------------------------------


@routes.get("/api/video-calls/config")
async def get_config(request: web.Request) -> web.Response:
    identity = authenticate(request)
    servers = ice_servers(request.app[CONFIG_KEY], user_id=identity.user_id, now=_now(request))
    return ok({"iceServers": servers})


@routes.get("/api/video-calls/can-join/{sessionId}")
async def can_join(request: web.Request) -> web.Response:
    ctx = await _session_access(request)
    decision = ctx.decision
    await record_request_access(
        request,
        _storage(request),
        action="join_attempt" if decision.can_join else "join_denied",
        result=ALLOWED if decision.can_join else DENIED,
        identity=ctx.identity,
        session_id=ctx.session.id,
        reason=decision.reason,
        room_id=ctx.session.meeting_link,
        metadata={"minutesUntilSession": decision.minutes_until_session},
        now=ctx.now,
    )
    return ok(
        {
            **decision.to_json(),
            "sessionId": ctx.session.id,
            "sessionDate": iso(ctx.session.session_date),
            "currentTime": iso(ctx.now),
        }
    )


@routes.post("/api/video-calls/generate-room/{sessionId}")
async def generate_room(request: web.Request) -> web.Response:
    ctx = await _session_access(request)
    session = ctx.session
    if not session.meeting_link:
        # A room is only created for a bookable session; joining still waits for the window.
        if ctx.decision.reason not in _ROOM_PREPARABLE:
            raise await _deny(
                request,
                _refusal(ctx.decision),
                identity=ctx.identity,
                session_id=session.id,
                reason=str(ctx.decision.reason),
                now=ctx.now,
                action="join_denied",
            )
        stored = await _storage(request).set_meeting_link(session.id, f"room-{uuid.uuid4()}")
        if stored is None:
            raise ApiError(404, SESSION_NOT_FOUND, "Session not found", {"sessionId": session.id})
        session = stored
    ctx = SessionAccess(ctx.identity, session, ctx.decision, ctx.now)
    users = await _storage(request).get_users(session.participant_ids())
    await _audit_allowed(request, ctx, "join_attempt")
    return ok(
        {
            "roomId": session.meeting_link,
            "sessionId": session.id,
            "sessionDate": iso(session.session_date),
            "sessionType": session.session_type,
            "participants": participants_json(session, users),
        }
    )


@routes.post("/api/video-calls/start/{sessionId}")
async def start_call(request: web.Request) -> web.Response:
    ctx = await _session_access(request)
    session = ctx.session
    if session.video_call_ended is not None:
        raise await _deny(
            request,
            ApiError(
                409, CALL_ALREADY_ENDED, "This call has already ended", {"sessionId": session.id}
            ),
            identity=ctx.identity,
            session_id=session.id,
            reason=CALL_ALREADY_ENDED,
            now=ctx.now,
            action="join_denied",
        )
    already_started: bool
    if session.video_call_started is None:
        if not ctx.decision.can_join:
            raise await _deny(
                request,
                _refusal(ctx.decision),
                identity=ctx.identity,
                session_id=session.id,
                reason=str(ctx.decision.reason),
                now=ctx.now,
                action="join_denied",
            )
        result = await _storage(request).mark_started(session.id, ctx.now)
        if result is None:
            raise ApiError(404, SESSION_NOT_FOUND, "Session not found", {"sessionId": session.id})
        session = result.session
        # First start wins: a concurrent start sees the stored time, not its own.
        already_started = not result.applied
    else:
        already_started = True
    ctx = SessionAccess(ctx.identity, session, ctx.decision, ctx.now)
    await _audit_allowed(request, ctx, "call_start", metadata={"alreadyStarted": already_started})
    return ok(
        {
            "message": "Video call already started" if already_started else "Video call started",
            "alreadyStarted": already_started,
            "session": {
                "id": session.id,
                "status": session.status,
                "videoCallStarted": iso(session.video_call_started),
                "meetingLink": session.meeting_link,
            },
        }
    )


def _end_time(body: dict[str, Any], started: datetime, now: datetime) -> datetime:
    """Server time, or the client's `endTime` if it lies after the start and not in the future."""
    errors = FieldErrors()
    unknown_fields(body, ("endTime",), errors)
    errors.raise_if_any()
    if body.get("endTime") is None:
        return now
    end_time = parse_timestamp(body["endTime"])
    if end_time is None:
        errors.add("endTime", "must be an ISO 8601 timestamp with a timezone")
        errors.raise_if_any()
    assert end_time is not None
    if not started < end_time <= now:
        raise ApiError(
            400,
            INVALID_END_TIME,
            "endTime must lie after the call's start and not in the future",
            {"endTime": iso(end_time), "videoCallStarted": iso(started), "now": iso(now)},
        )
    return end_time


@routes.post("/api/video-calls/end/{sessionId}")
async def end_call(request: web.Request) -> web.Response:
    ctx = await _session_access(request)
    body = await read_json_object(request, required=False)
    session = ctx.session
    started = session.video_call_started
    if started is None:
        raise await _deny(
            request,
            ApiError(409, CALL_NOT_STARTED, "This call has not started", {"sessionId": session.id}),
            identity=ctx.identity,
            session_id=session.id,
            reason=CALL_NOT_STARTED,
            now=ctx.now,
            action="join_denied",
        )
    already_ended = session.video_call_ended is not None
    if not already_ended:
        ended_at = _end_time(body, started, ctx.now)
        duration = call_duration_minutes(started, ended_at)
        result = await _storage(request).mark_ended(session.id, ended_at, duration)
        if result is None:
            raise ApiError(404, SESSION_NOT_FOUND, "Session not found", {"sessionId": session.id})
        # Someone else may have ended it between our read and our write: theirs stands.
        already_ended = not result.applied
        session = result.session
    ctx = SessionAccess(ctx.identity, session, ctx.decision, ctx.now)
    await _audit_allowed(
        request,
        ctx,
        "call_end",
        duration=session.call_duration,
        metadata={"alreadyEnded": already_ended},
    )
    return ok(
        {
            "message": "Video call already ended" if already_ended else "Video call ended",
            "alreadyEnded": already_ended,
            "duration": session.call_duration,
            "session": {
                "id": session.id,
                "status": session.status,
                "callDuration": session.call_duration,
                "videoCallStarted": iso(session.video_call_started),
                "videoCallEnded": iso(session.video_call_ended),
            },
        }
    )


@routes.get("/api/video-calls/session/{sessionId}")
async def get_session(request: web.Request) -> web.Response:
    ctx = await _session_access(request)
    users = await _storage(request).get_users(ctx.session.participant_ids())
    await _audit_allowed(request, ctx, "session_view")
    return ok(
        {
            "session": {
                **session_json(ctx.session, users),
                **call_fields_json(ctx.session),
                "canJoin": ctx.decision.can_join,
                "reason": ctx.decision.reason,
                "timeWindow": ctx.decision.time_window(),
            }
        }
    )


@routes.get("/api/video-calls/history")
async def call_history(request: web.Request) -> web.Response:
    identity = authenticate(request)
    page, limit = pagination(request.query)
    storage = _storage(request)
    result = await storage.list_history(identity.user_id, identity.role, page=page, limit=limit)
    user_ids = {uid for s in result.sessions for uid in s.participant_ids()}
    users = await storage.get_users(user_ids)
    return ok(
        {
            "callHistory": [history_item_json(s, users) for s in result.sessions],
            "pagination": {
                "page": page,
                "limit": limit,
                "offset": (page - 1) * limit,
                "total": result.total,
                "pages": (result.total + limit - 1) // limit,
            },
        }
    )
