"""JSON shapes of records, in the platform's field names (camelCase, ISO 8601 `…Z` times)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from storage.base import SessionRecord, UserRecord, format_datetime


def iso(value: datetime | None) -> str | None:
    return format_datetime(value) if value is not None else None


def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "role": user.role,
        "createdAt": iso(user.created_at),
    }


def participant_json(user_id: str, users: Mapping[str, UserRecord]) -> dict[str, Any]:
    """`{id, name, email}`; name/email are null for a user this service has no record of
    (tokens are trusted by signature, so a participant need not exist in `users`)."""
    user = users.get(user_id)
    return {
        "id": user_id,
        "name": user.name if user else None,
        "email": user.email if user else None,
    }


def participants_json(
    session: SessionRecord, users: Mapping[str, UserRecord]
) -> dict[str, dict[str, Any]]:
    return {
        "client": participant_json(session.client_id, users),
        "psychologist": participant_json(session.psychologist_id, users),
    }


def call_fields_json(session: SessionRecord) -> dict[str, Any]:
    return {
        "meetingLink": session.meeting_link,
        "isVideoCall": session.is_video_call,
        "videoCallStarted": iso(session.video_call_started),
        "videoCallEnded": iso(session.video_call_ended),
        "callDuration": session.call_duration,
    }


def session_json(
    session: SessionRecord, users: Mapping[str, UserRecord] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": session.id,
        "sessionType": session.session_type,
        "sessionDate": iso(session.session_date),
        "status": session.status,
        "paymentStatus": session.payment_status,
        **call_fields_json(session),
        "createdAt": iso(session.created_at),
        "updatedAt": iso(session.updated_at),
    }
    if users is not None:
        body.update(participants_json(session, users))
    else:
        body.update(client=session.client_id, psychologist=session.psychologist_id)
    return body


def history_item_json(session: SessionRecord, users: Mapping[str, UserRecord]) -> dict[str, Any]:
    """One entry of `GET /history`, shaped like the platform's `callHistory` items."""
    return {
        "sessionId": session.id,
        "sessionType": session.session_type,
        "sessionDate": iso(session.session_date),
        "status": session.status,
        **participants_json(session, users),
        "callData": {
            "roomId": session.meeting_link,
            "startTime": iso(session.video_call_started),
            "endTime": iso(session.video_call_ended),
            "duration": session.call_duration,
        },
    }
