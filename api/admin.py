"""Admin-only management endpoints, so the service is usable without the platform:
create users and sessions, read and change a session's status and payment, read its audit log.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from api.auth import require_admin
from api.errors import EMAIL_TAKEN, USER_NOT_FOUND, ApiError, ok, read_json_object
from api.keys import STORAGE_KEY
from api.validation import (
    FieldErrors,
    choice,
    parse_timestamp,
    session_id_param,
    unknown_fields,
    user_id_param,
)
from api.views import iso, session_json, user_json
from calls.errors import SESSION_NOT_FOUND
from storage.base import (
    PAYMENT_STATUSES,
    ROLES,
    SESSION_STATUSES,
    SESSION_TYPES,
    AuditEntry,
    DuplicateError,
    SessionRecord,
    is_object_id,
)

routes = web.RouteTableDef()

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_NAME = 200


def _text(body: dict[str, Any], name: str, errors: FieldErrors, *, max_len: int) -> str | None:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        errors.add(name, "required, a non-empty string")
        return None
    if len(value.strip()) > max_len:
        errors.add(name, f"at most {max_len} characters")
        return None
    return value.strip()


@routes.post("/api/admin/users")
async def create_user(request: web.Request) -> web.Response:
    require_admin(request)
    body = await read_json_object(request)
    errors = FieldErrors()
    unknown_fields(body, ("name", "email", "role"), errors)
    name = _text(body, "name", errors, max_len=MAX_NAME)
    email = _text(body, "email", errors, max_len=254)
    if email is not None and not EMAIL_RE.fullmatch(email):
        errors.add("email", "not an email address")
    role = choice(body.get("role"), ROLES)
    if role is None:
        errors.add("role", f"one of {', '.join(ROLES)}")
    errors.raise_if_any()
    assert name is not None and email is not None and role is not None
    try:
        user = await request.app[STORAGE_KEY].create_user(name=name, email=email, role=role)
    except DuplicateError:
        raise ApiError(
            409, EMAIL_TAKEN, "A user with this email already exists", {"email": email.lower()}
        ) from None
    return ok(user_json(user), status=201)


@routes.get("/api/admin/users/{userId}")
async def get_user(request: web.Request) -> web.Response:
    require_admin(request)
    user_id = user_id_param(request.match_info["userId"])
    user = await request.app[STORAGE_KEY].get_user(user_id)
    if user is None:
        raise ApiError(404, USER_NOT_FOUND, "User not found", {"userId": user_id})
    return ok(user_json(user))


def _status_fields(body: dict[str, Any], errors: FieldErrors) -> tuple[str | None, str | None]:
    status = payment = None
    if body.get("status") is not None:
        status = choice(body["status"], SESSION_STATUSES)
        if status is None:
            errors.add("status", f"one of {', '.join(SESSION_STATUSES)}")
    if body.get("paymentStatus") is not None:
        payment = choice(body["paymentStatus"], PAYMENT_STATUSES)
        if payment is None:
            errors.add("paymentStatus", f"one of {', '.join(PAYMENT_STATUSES)}")
    return status, payment


@routes.post("/api/admin/sessions")
async def create_session(request: web.Request) -> web.Response:
    require_admin(request)
    body = await read_json_object(request)
    storage = request.app[STORAGE_KEY]
    errors = FieldErrors()
    unknown_fields(
        body,
        (
            "client",
            "psychologist",
            "sessionDate",
            "status",
            "paymentStatus",
            "sessionType",
            "isVideoCall",
        ),
        errors,
    )
    ids: dict[str, str] = {}
    for field in ("client", "psychologist"):
        value = body.get(field)
        if not is_object_id(value):
            errors.add(field, "required, a 24-hex user id")
        else:
            ids[field] = str(value).lower()
    if len(ids) == 2 and ids["client"] == ids["psychologist"]:
        errors.add("psychologist", "must differ from client")
    session_date = parse_timestamp(body.get("sessionDate"))
    if session_date is None:
        errors.add(
            "sessionDate",
            "required, ISO 8601 with a timezone in 1970..2999, e.g. 2025-12-15T14:00:00Z",
        )
    status, payment = _status_fields(body, errors)
    session_type = choice(body.get("sessionType", "Individual"), SESSION_TYPES)
    if session_type is None:
        errors.add("sessionType", f"one of {', '.join(SESSION_TYPES)}")
    is_video_call = body.get("isVideoCall", True)
    if not isinstance(is_video_call, bool):
        errors.add("isVideoCall", "a boolean")
    if len(ids) == 2:
        users = await storage.get_users(ids.values())
        for field, user_id in ids.items():
            user = users.get(user_id)
            if user is None:
                errors.add(field, "no such user")
            elif user.role != field:
                errors.add(field, f"user {user_id} has role {user.role}, not {field}")
    errors.raise_if_any()
    assert session_date is not None and session_type is not None
    session = await storage.create_session(
        client_id=ids["client"],
        psychologist_id=ids["psychologist"],
        session_date=session_date,
        status=status or "Pending",
        payment_status=payment or "Pending",
        session_type=session_type,
        is_video_call=bool(is_video_call),
    )
    users = await storage.get_users(session.participant_ids())
    return ok(session_json(session, users), status=201)


async def _existing_session(request: web.Request) -> SessionRecord:
    session_id = session_id_param(request.match_info["sessionId"])
    session = await request.app[STORAGE_KEY].get_session(session_id)
    if session is None:
        raise ApiError(404, SESSION_NOT_FOUND, "Session not found", {"sessionId": session_id})
    return session


@routes.get("/api/admin/sessions/{sessionId}")
async def get_session(request: web.Request) -> web.Response:
    require_admin(request)
    session = await _existing_session(request)
    users = await request.app[STORAGE_KEY].get_users(session.participant_ids())
    return ok(session_json(session, users))


@routes.patch("/api/admin/sessions/{sessionId}")
async def update_session(request: web.Request) -> web.Response:
    require_admin(request)
    session = await _existing_session(request)
    body = await read_json_object(request)
    errors = FieldErrors()
    unknown_fields(body, ("status", "paymentStatus", "sessionDate"), errors)
    status, payment = _status_fields(body, errors)
    session_date = None
    if body.get("sessionDate") is not None:
        session_date = parse_timestamp(body["sessionDate"])
        if session_date is None:
            errors.add(
                "sessionDate", "ISO 8601 with a timezone in 1970..2999, e.g. 2025-12-15T14:00:00Z"
            )
    if status is None and payment is None and session_date is None and not errors.errors:
        errors.add("status", "give at least one of status, paymentStatus, sessionDate")
    errors.raise_if_any()
    storage = request.app[STORAGE_KEY]
    updated = await storage.update_session(
        session.id, status=status, payment_status=payment, session_date=session_date
    )
    if updated is None:
        raise ApiError(404, SESSION_NOT_FOUND, "Session not found", {"sessionId": session.id})
    users = await storage.get_users(updated.participant_ids())
    return ok(session_json(updated, users))


def _audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "timestamp": iso(entry.timestamp),
        "action": entry.action,
        "result": entry.result,
        "reason": entry.reason,
        "sessionId": entry.session_id,
        "userId": entry.user_id,
        "userRole": entry.role,
        "ipAddress": entry.ip_address,
        "userAgent": entry.user_agent,
        "roomId": entry.room_id,
        "errorCode": entry.error_code,
        "errorMessage": entry.error_message,
        "duration": entry.duration,
        "metadata": dict(entry.metadata),
    }


@routes.get("/api/admin/sessions/{sessionId}/audit")
async def session_audit(request: web.Request) -> web.Response:
    require_admin(request)
    session = await _existing_session(request)
    entries = await request.app[STORAGE_KEY].list_audit(session_id=session.id, limit=500)
    return ok({"sessionId": session.id, "entries": [_audit_json(e) for e in entries]})
