"""The seed's video-call REST API: `/api/video-calls/*`, same paths and response shapes.

Each handler only translates: the request into a call on `calls.service.CallService` (which
authorizes, decides, audits and acts), and its answer into the envelope. A `CallError` it raises
becomes the envelope's error in `api.errors.call_error_middleware`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from api.auth import authenticate, identify
from api.errors import ok, read_json_object
from api.keys import E2EE_POLICY_KEY, SERVICE_KEY
from api.validation import FieldErrors, pagination, parse_timestamp, unknown_fields
from api.views import call_fields_json, history_item_json, iso, participants_json, session_json
from calls.audit import Origin
from calls.service import CallService, SessionAccess

routes = web.RouteTableDef()


def _service(request: web.Request) -> CallService:
    return request.app[SERVICE_KEY]


def origin(request: web.Request) -> Origin:
    """Where the request came from, for its audit entry."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    return Origin(
        ip_address=request.remote,
        user_agent=request.headers.get("User-Agent"),
        endpoint=f"{request.method} {route}",
    )


async def _access(request: web.Request) -> SessionAccess:
    """The caller may see `:sessionId` (refusals are audited and raised by the service)."""
    return await _service(request).authorize(
        identify(request), request.match_info["sessionId"], origin(request)
    )


# -- endpoints ----------------------------------------------------------------------------------


@routes.get("/api/video-calls/config")
async def get_config(request: web.Request) -> web.Response:
    identity = authenticate(request)
    return ok(
        {
            "iceServers": _service(request).ice_servers(identity),
            "e2ee": request.app.get(E2EE_POLICY_KEY, "preferred"),
        }
    )


@routes.get("/api/video-calls/can-join/{sessionId}")
async def can_join(request: web.Request) -> web.Response:
    access = await _access(request)
    decision = await _service(request).can_join(access)
    return ok(
        {
            **decision.to_json(),
            "sessionId": access.session.id,
            "sessionDate": iso(access.session.session_date),
            "currentTime": iso(access.now),
        }
    )


@routes.post("/api/video-calls/generate-room/{sessionId}")
async def generate_room(request: web.Request) -> web.Response:
    access = await _access(request)
    room = await _service(request).generate_room(access)
    session = room.session
    return ok(
        {
            "roomId": session.meeting_link,
            "sessionId": session.id,
            "sessionDate": iso(session.session_date),
            "sessionType": session.session_type,
            "participants": participants_json(session, room.users),
        }
    )


@routes.post("/api/video-calls/start/{sessionId}")
async def start_call(request: web.Request) -> web.Response:
    access = await _access(request)
    started = await _service(request).start(access)
    session = started.session
    return ok(
        {
            "message": "Video call already started"
            if started.already_started
            else "Video call started",
            "alreadyStarted": started.already_started,
            "session": {
                "id": session.id,
                "status": session.status,
                "videoCallStarted": iso(session.video_call_started),
                "meetingLink": session.meeting_link,
            },
        }
    )


def _requested_end(body: dict[str, Any]) -> datetime | None:
    """The body's `endTime` (None: end now); 400 for unknown fields or a malformed time."""
    errors = FieldErrors()
    unknown_fields(body, ("endTime",), errors)
    errors.raise_if_any()
    if body.get("endTime") is None:
        return None
    end_time = parse_timestamp(body["endTime"])
    if end_time is None:
        errors.add("endTime", "must be an ISO 8601 timestamp with a timezone")
        errors.raise_if_any()
    return end_time


@routes.post("/api/video-calls/end/{sessionId}")
async def end_call(request: web.Request) -> web.Response:
    access = await _access(request)
    body = await read_json_object(request, required=False)
    ended = await _service(request).end(access, lambda: _requested_end(body))
    session = ended.session
    return ok(
        {
            "message": "Video call already ended" if ended.already_ended else "Video call ended",
            "alreadyEnded": ended.already_ended,
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
    access = await _access(request)
    view = await _service(request).view(access)
    return ok(
        {
            "session": {
                **session_json(view.session, view.users),
                **call_fields_json(view.session),
                "canJoin": view.decision.can_join,
                "reason": view.decision.reason,
                "timeWindow": view.decision.time_window(),
            }
        }
    )


@routes.get("/api/video-calls/history")
async def call_history(request: web.Request) -> web.Response:
    identity = authenticate(request)
    page, limit = pagination(request.query)
    history = await _service(request).history(identity, page=page, limit=limit)
    return ok(
        {
            "callHistory": [history_item_json(s, history.users) for s in history.sessions],
            "pagination": {
                "page": page,
                "limit": limit,
                "offset": (page - 1) * limit,
                "total": history.total,
                "pages": (history.total + limit - 1) // limit,
            },
        }
    )
