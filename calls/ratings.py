"""After the call: each participant's 1–5 rating of the call's quality ("User Satisfaction").

A rating belongs to a session (its booking, whose room hosts the call) and to one participant:
one rating per participant per session. A second one is refused (409 `ALREADY_RATED`) rather
than replacing the first, so the rating histogram counts each participant's verdict once.

The rating is stored in `videocallmetrics` as its own document (`period: "rating"`), keyed by
session and user, because the call's quality summary (keyed by room id + the relay's start time)
may be written a moment after the call ends, or not at all for a call that carried no media. The
metrics side joins the two when it reads a room's summaries.

`CallRatings` decides, audits and stores; the REST face (`api/ratings.py`) only translates. An
optional `RatingObserver` (implemented by `metrics.setup.Metrics`, wired by the composition root)
is told of each stored rating, so `calls` does not import `metrics`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from calls.audit import ALLOWED, DENIED, AuditLog
from calls.errors import CALL_NOT_STARTED, PERMISSION_DENIED, CallError, ErrorKind
from calls.service import SessionAccess
from storage.base import Storage

RATING_PERIOD = "rating"
MIN_RATING = 1
MAX_RATING = 5
# "What went wrong": a fixed set, so a client cannot mint label values or store free text.
REASONS = ("audio", "video", "connection")
RATING_ACTION = "call_rating"
# Participants who may rate: the session's two sides (an admin watching is not a participant).
RATING_ROLES = frozenset({"client", "psychologist"})

ALREADY_RATED = "ALREADY_RATED"
INVALID_RATING = "INVALID_RATING"


class RatingObserver(Protocol):
    """Told of every stored rating (the Prometheus histogram)."""

    def call_rated(self, rating: int, reasons: Sequence[str], role: str) -> None: ...


@dataclass(frozen=True)
class RatingInput:
    rating: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Rating:
    session_id: str
    room_id: str | None
    user_id: str
    role: str
    rating: int
    reasons: tuple[str, ...]
    rated_at: datetime

    def to_doc(self) -> dict[str, Any]:
        return {
            "roomId": self.room_id,
            "role": self.role,
            "rating": self.rating,
            "reasons": list(self.reasons),
            "ratedAt": self.rated_at,
        }


def rating_key(session_id: str, user_id: str) -> dict[str, Any]:
    """One document per participant and session."""
    return {"period": RATING_PERIOD, "sessionId": session_id, "userId": user_id}


def parse_rating(body: Mapping[str, Any]) -> RatingInput:
    """`{"rating": 1..5, "reasons": [...]}`: every problem of the body at once, as INVALID."""
    fields: dict[str, str] = {}
    for name in body:
        if name not in ("rating", "reasons"):
            fields[name] = "unknown field"
    raw = body.get("rating")
    # bool is an int in Python; `true` is not a rating.
    if not isinstance(raw, int) or isinstance(raw, bool) or not MIN_RATING <= raw <= MAX_RATING:
        fields["rating"] = f"must be an integer from {MIN_RATING} to {MAX_RATING}"
    reasons_raw = body.get("reasons", [])
    reasons: list[str] = []
    if not isinstance(reasons_raw, list) or len(reasons_raw) > len(REASONS):
        fields["reasons"] = f"must be a list of at most {len(REASONS)} of {', '.join(REASONS)}"
    else:
        for item in reasons_raw:
            if not isinstance(item, str) or item not in REASONS:
                fields["reasons"] = f"each reason must be one of {', '.join(REASONS)}"
                break
            if item in reasons:
                fields["reasons"] = "a reason may appear only once"
                break
            reasons.append(item)
    if fields:
        raise CallError(ErrorKind.INVALID, INVALID_RATING, "Invalid rating", {"fields": fields})
    assert isinstance(raw, int)
    # Canonical order, so equal answers are stored equally.
    return RatingInput(raw, tuple(r for r in REASONS if r in reasons))


class CallRatings:
    """Rates a session's call: who may, once each, audited."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        observer: RatingObserver | None = None,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self.observer = observer
        # Serialises check-then-write within this process (a double click); ratings are rare,
        # so one lock for all of them costs nothing.
        self._lock = asyncio.Lock()

    async def rate(self, access: SessionAccess, given: RatingInput) -> Rating:
        """Store the caller's rating; refused (audited, nothing stored) for a non-participant,
        a session whose call never started, or a second rating."""
        session, identity = access.session, access.identity
        role = access.decision.participant_role
        if role not in RATING_ROLES:
            raise await self._refuse(
                access,
                CallError(
                    ErrorKind.FORBIDDEN,
                    PERMISSION_DENIED,
                    "Only the session's participants can rate its call",
                    {"sessionId": session.id},
                ),
            )
        if session.video_call_started is None:
            raise await self._refuse(
                access,
                CallError(
                    ErrorKind.CONFLICT,
                    CALL_NOT_STARTED,
                    "This call has not started: there is nothing to rate yet",
                    {"sessionId": session.id},
                ),
            )
        assert role is not None
        key = rating_key(session.id, identity.user_id)
        async with self._lock:
            existing = await self._storage.get_call_metrics(key)
            if existing is not None:
                raise await self._refuse(
                    access,
                    CallError(
                        ErrorKind.CONFLICT,
                        ALREADY_RATED,
                        "You have already rated this call",
                        {"sessionId": session.id, "rating": existing.get("rating")},
                    ),
                )
            rating = Rating(
                session_id=session.id,
                room_id=session.meeting_link,
                user_id=identity.user_id,
                role=role,
                rating=given.rating,
                reasons=given.reasons,
                rated_at=access.now,
            )
            await self._storage.upsert_call_metrics(key, values=rating.to_doc())
        await self._audit.record(
            action=RATING_ACTION,
            result=ALLOWED,
            origin=access.origin,
            identity=identity,
            session_id=session.id,
            room_id=session.meeting_link,
            now=access.now,
            metadata={"rating": rating.rating, "reasons": list(rating.reasons)},
        )
        if self.observer is not None:
            self.observer.call_rated(rating.rating, rating.reasons, role)
        return rating

    async def _refuse(self, access: SessionAccess, error: CallError) -> CallError:
        await self._audit.record(
            action=RATING_ACTION,
            result=DENIED,
            origin=access.origin,
            identity=access.identity,
            session_id=access.session.id,
            room_id=access.session.meeting_link,
            reason=error.code,
            error_message=error.message,
            now=access.now,
        )
        return error
