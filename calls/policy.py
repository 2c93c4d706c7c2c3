"""THE access policy for a session's video call: REST `can-join`, `start`, `generate-room`,
and the WebSocket `join-room` all decide through `evaluate_access` (called by
`calls.service.CallService` only), so they can never disagree.

The seed's rules: the session exists and is Confirmed; payment is settled; now lies within
15 minutes before to 2 hours after `sessionDate` (edges included); the caller is the session's
client, its psychologist, or an admin. A session whose call is already running (`In Progress`)
stays joinable so the second participant (or a reconnect) can get in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from calls.identity import Identity
from storage.base import SessionRecord, format_datetime

JOIN_OPENS_BEFORE = timedelta(minutes=15)
JOIN_CLOSES_AFTER = timedelta(hours=2)

# The platform's records use all four for a settled payment; compare case-insensitively.
SETTLED_PAYMENT_STATUSES = frozenset({"completed", "paid", "confirmed", "verified"})
JOINABLE_STATUSES = frozenset({"confirmed", "in progress"})
CANCELLED_STATUSES = frozenset({"cancelled", "canceled", "declined"})

# Reasons (`reason` of can-join; also the error code when a join/start is refused).
SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
NOT_A_PARTICIPANT = "NOT_A_PARTICIPANT"
NOT_A_VIDEO_CALL = "NOT_A_VIDEO_CALL"
SESSION_CANCELLED = "SESSION_CANCELLED"
SESSION_COMPLETED = "SESSION_COMPLETED"
SESSION_NOT_CONFIRMED = "SESSION_NOT_CONFIRMED"
PAYMENT_PENDING = "PAYMENT_PENDING"
TOO_EARLY = "TOO_EARLY"
SESSION_EXPIRED = "SESSION_EXPIRED"

REASON_MESSAGES = {
    SESSION_NOT_FOUND: "Session not found",
    NOT_A_PARTICIPANT: "Only the session's client, psychologist or an admin may access it",
    NOT_A_VIDEO_CALL: "This session is not a video call",
    SESSION_CANCELLED: "The session was cancelled or declined",
    SESSION_COMPLETED: "The session's call has already ended",
    SESSION_NOT_CONFIRMED: "The session is not confirmed yet",
    PAYMENT_PENDING: "Payment must be settled before joining",
    TOO_EARLY: "The call opens 15 minutes before the session starts",
    SESSION_EXPIRED: "The call closed 2 hours after the session's start",
}


@dataclass(frozen=True)
class AccessDecision:
    """The outcome of `evaluate_access`.

    `http_status`/`error_code` say whether the caller may see the session at all
    (200/None, 404/"SESSION_NOT_FOUND", 403/"FORBIDDEN"); `can_join`/`reason` say whether
    they may join its call now.
    """

    can_join: bool
    reason: str | None
    message: str
    http_status: int
    error_code: str | None
    is_participant: bool
    # The seat the caller takes: "client", "psychologist" or "admin" (None if not a participant).
    participant_role: str | None
    minutes_until_session: int | None
    allowed_from: datetime | None
    allowed_until: datetime | None
    session_status: str | None
    payment_status: str | None

    @property
    def can_view(self) -> bool:
        return self.http_status == 200

    def time_window(self) -> dict[str, str] | None:
        if self.allowed_from is None or self.allowed_until is None:
            return None
        return {
            "allowedFrom": format_datetime(self.allowed_from),
            "allowedUntil": format_datetime(self.allowed_until),
        }

    def to_json(self) -> dict[str, Any]:
        """The can-join answer's `data`."""
        return {
            "canJoin": self.can_join,
            "reason": self.reason,
            "message": self.message,
            "minutesUntilSession": self.minutes_until_session,
            "sessionStatus": self.session_status,
            "paymentStatus": self.payment_status,
            "timeWindow": self.time_window(),
        }


def join_window(session_date: datetime) -> tuple[datetime, datetime]:
    return session_date - JOIN_OPENS_BEFORE, session_date + JOIN_CLOSES_AFTER


def is_payment_settled(payment_status: str | None) -> bool:
    return (payment_status or "").strip().lower() in SETTLED_PAYMENT_STATUSES


def minutes_until(session_date: datetime, now: datetime) -> int:
    """Whole minutes from now to the start, rounded like JavaScript's Math.round (half up)."""
    elapsed_ms = (session_date - now) // timedelta(milliseconds=1)
    return (elapsed_ms + 30_000) // 60_000


def participant_role(session: SessionRecord, identity: Identity) -> str | None:
    if identity.user_id == session.client_id:
        return "client"
    if identity.user_id == session.psychologist_id:
        return "psychologist"
    if identity.is_admin:
        return "admin"
    return None


def evaluate_access(
    session: SessionRecord | None, identity: Identity, now: datetime
) -> AccessDecision:
    """Decide whether `identity` may see `session` and join its call at `now`."""
    if session is None:
        return _decision(SESSION_NOT_FOUND, http_status=404, error_code=SESSION_NOT_FOUND)
    seat = participant_role(session, identity)
    if seat is None:
        # Not even the session's state is disclosed to outsiders.
        return _decision(NOT_A_PARTICIPANT, http_status=403, error_code="FORBIDDEN")

    allowed_from, allowed_until = join_window(session.session_date)
    reason = _refusal(session, now, allowed_from, allowed_until)
    return AccessDecision(
        can_join=reason is None,
        reason=reason,
        message=REASON_MESSAGES[reason] if reason else "You can join the call",
        http_status=200,
        error_code=None,
        is_participant=True,
        participant_role=seat,
        minutes_until_session=minutes_until(session.session_date, now),
        allowed_from=allowed_from,
        allowed_until=allowed_until,
        session_status=session.status,
        payment_status=session.payment_status,
    )


def _refusal(
    session: SessionRecord, now: datetime, allowed_from: datetime, allowed_until: datetime
) -> str | None:
    """The first rule the session breaks, in the platform's order; None if joinable."""
    status = session.status.strip().lower()
    if not session.is_video_call:
        return NOT_A_VIDEO_CALL
    if status in CANCELLED_STATUSES:
        return SESSION_CANCELLED
    if status == "completed" or session.video_call_ended is not None:
        return SESSION_COMPLETED
    if status not in JOINABLE_STATUSES:
        return SESSION_NOT_CONFIRMED
    if not is_payment_settled(session.payment_status):
        return PAYMENT_PENDING
    if now < allowed_from:
        return TOO_EARLY
    if now > allowed_until:
        return SESSION_EXPIRED
    return None


def _decision(reason: str, *, http_status: int, error_code: str) -> AccessDecision:
    return AccessDecision(
        can_join=False,
        reason=reason,
        message=REASON_MESSAGES[reason],
        http_status=http_status,
        error_code=error_code,
        is_participant=False,
        participant_role=None,
        minutes_until_session=None,
        allowed_from=None,
        allowed_until=None,
        session_status=None,
        payment_status=None,
    )
