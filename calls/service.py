"""The call service: can-join, join, start, end — each decides, audits itself and acts.

REST (`api/routes.py`) and the WebSocket (`signaling/connection.py`) only translate their wire
formats into calls on `CallService` and its answers (plain results, or a `CallError`) back.

REST endpoints on one session take two steps: `authorize` (the caller may see the session; its
refusals are audited), then the operation on the returned `SessionAccess`, so a face can read its
request body in between exactly where it always did. The WebSocket's `join_room` seats the caller
through a callback the face passes (the service never touches the relay), so a full room and the
successful join are audited here too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from calls import policy
from calls.audit import ALLOWED, DENIED, AuditLog, Origin
from calls.errors import (
    CALL_ALREADY_ENDED,
    CALL_NOT_STARTED,
    INVALID_END_TIME,
    INVALID_SESSION_ID,
    PERMISSION_DENIED,
    RATE_LIMITED,
    ROOM_FULL,
    ROOM_NOT_FOUND,
    SESSION_NOT_FOUND,
    UNAUTHORIZED,
    CallError,
    ErrorKind,
)
from calls.ice_servers import IceSettings, ice_servers
from calls.identity import AuthError, Identity, decode_token
from calls.policy import AccessDecision, evaluate_access
from calls.ratelimit import RateLimit, RateLimiter, user_key
from storage.base import (
    HistoryPage,
    SessionRecord,
    Storage,
    UserRecord,
    call_duration_minutes,
    format_datetime,
    is_object_id,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

# Who is asking, as far as the face could tell: a verified identity, or why the token was refused.
Caller = Identity | AuthError

# Refusals that still let a participant prepare the room ahead of the join window.
_ROOM_PREPARABLE = frozenset({None, policy.TOO_EARLY})
# A participant's display name when the service has no user record (tokens are trusted).
ROLE_NAMES = {"client": "Client", "psychologist": "Psychologist", "admin": "Admin"}
JOIN_ENDPOINT = "WS join-room"
# The audit origin of what the server decides on its own (no client asked).
SERVER_ORIGIN = Origin(ip_address=None, user_agent=None, endpoint="server: stale-call check")
# Why the server ended a call (the `call_end` audit entry's reason).
ROOM_EMPTY = "room_empty"
# Who ended a call the server ended (`CallEnded.ended_by_role`).
SERVER_ROLE = "server"
WINDOW_CLOSED = "window_closed"
# Connections over the per-user budget that rejoin a seat the user holds (a reconnect after a
# network blip) are let in, up to this many a minute per user on the node holding the seat:
# a reconnecting participant is never locked out, a loop reconnecting without end still is.
SEATED_RECONNECTS_PER_MIN = 20


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_session_id(value: str) -> str:
    """A `sessionId` as given by a client, which must be a 24-hex ObjectId."""
    if not is_object_id(value):
        raise CallError(
            ErrorKind.INVALID,
            INVALID_SESSION_ID,
            "sessionId must be a 24-character hexadecimal ObjectId",
            {"sessionId": value[:64]},
        )
    return value.lower()


@dataclass(frozen=True)
class SessionAccess:
    """A caller who may see the session (participant or admin), at one instant."""

    identity: Identity
    session: SessionRecord
    decision: AccessDecision
    now: datetime
    origin: Origin


@dataclass(frozen=True)
class PreparedRoom:
    session: SessionRecord
    users: Mapping[str, UserRecord]


@dataclass(frozen=True)
class SessionView:
    session: SessionRecord
    users: Mapping[str, UserRecord]
    decision: AccessDecision


@dataclass(frozen=True)
class Started:
    session: SessionRecord
    # True when the call had been started before (by this or a concurrent request).
    already_started: bool


@dataclass(frozen=True)
class Ended:
    session: SessionRecord
    already_ended: bool


@dataclass(frozen=True)
class CallEnded:
    """A live call was just ended (by a participant or admin through REST, or by the server)."""

    session_id: str
    room_id: str | None
    # Who ended it: a user id and their seat's role, or None and "server" for the server.
    ended_by_user_id: str | None
    ended_by_role: str
    duration_minutes: int | None


# Told when a call ends, awaited in turn; the composition root closes the relay's room with it.
CallEndedListener = Callable[[CallEnded], Awaitable[None]]


@dataclass(frozen=True)
class History:
    sessions: list[SessionRecord]
    users: Mapping[str, UserRecord]
    total: int


@dataclass(frozen=True)
class Seat:
    """Who takes a seat in a room, as `join_room` hands it to the face's seating callback."""

    session_id: str
    user_id: str
    user_name: str
    # "client", "psychologist" or "admin": the seat in the session, not just the token's role.
    role: str


@dataclass(frozen=True)
class Joined(Generic[T]):
    session_id: str
    # What the face's seating callback returned (its room and participant).
    seated: T


class RoomIsFull(Exception):
    """Raised by a seating callback when the room has no free seat; `join_room` audits it."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit


class OverBudget(CallError):
    """RATE_LIMITED for a caller whose token was good (it carries the identity): the face may
    still let the connection in to rejoin only a seat the user holds (`reconnect_to_seat`)."""

    def __init__(self, identity: Identity, retry_after: int, limit: int) -> None:
        super().__init__(
            ErrorKind.RATE_LIMITED,
            RATE_LIMITED,
            f"at most {limit} connections per minute",
            {"retryAfter": retry_after},
        )
        self.identity = identity


class CallService:
    """The domain's one entry point for both faces."""

    def __init__(
        self,
        storage: Storage,
        *,
        secret: str,
        clock: Callable[[], datetime] = utc_now,
        ice: IceSettings | None = None,
        ws_limiter: RateLimit | None = None,
    ) -> None:
        self.storage = storage
        self.audit = AuditLog(storage)
        self.clock = clock
        self.ice = ice or IceSettings()
        # Per-user WebSocket connection budget (RATE_LIMIT_WS_PER_MIN); disabled when None.
        self.ws_limiter: RateLimit = ws_limiter or RateLimiter(0)
        # Reconnects to a held or live seat beyond `ws_limiter`'s budget (SEATED_RECONNECTS_...).
        self.seated_reconnects = RateLimiter(SEATED_RECONNECTS_PER_MIN)
        self._secret = secret
        # Started calls seen with an empty room: since when (session id → first seen empty).
        self._empty_since: dict[str, datetime] = {}
        self._call_ended_listeners: list[CallEndedListener] = []

    def on_call_ended(self, listener: CallEndedListener) -> None:
        """Have `listener` told whenever a call ends here (once per call: the first end wins)."""
        self._call_ended_listeners.append(listener)

    async def _call_ended(self, ended: CallEnded) -> None:
        for listener in self._call_ended_listeners:
            try:
                await listener(ended)
            except Exception:  # the call is ended in storage whatever a listener does
                log.exception("a call-ended listener failed", extra={"call_id": ended.room_id})

    # -- who is calling -------------------------------------------------------------------

    def identify(self, token: str) -> Identity:
        """The identity `token` vouches for, checked against the service's clock; `AuthError`."""
        return decode_token(token, self._secret, now=self.clock())

    async def connect(self, token: str, *, counted: bool = True) -> Identity:
        """A WebSocket connection authenticates: the token, then the per-user connection budget
        (`counted=False`: a connection another node bridged here, counted there already)."""
        try:
            identity = self.identify(token)
        except AuthError as exc:
            raise CallError(
                ErrorKind.UNAUTHENTICATED, UNAUTHORIZED, exc.message, {"reason": exc.reason}
            ) from None
        if not counted:
            return identity
        limit = await self.ws_limiter.hit(user_key(identity.user_id))
        if not limit.allowed:
            raise OverBudget(identity, limit.retry_after, limit.limit)
        return identity

    async def reconnect_to_seat(self, identity: Identity) -> None:
        """A connection over the budget rejoins a seat its user holds: let it, unless the user
        has done so `SEATED_RECONNECTS_PER_MIN` times this minute (then RATE_LIMITED)."""
        limit = await self.seated_reconnects.hit(user_key(identity.user_id))
        if not limit.allowed:
            raise OverBudget(identity, limit.retry_after, limit.limit)

    def ice_servers(self, identity: Identity) -> list[dict[str, Any]]:
        return ice_servers(self.ice, user_id=identity.user_id, now=self.clock())

    # -- REST: one session ----------------------------------------------------------------

    async def authorize(self, caller: Caller, session_id: str, origin: Origin) -> SessionAccess:
        """Check the caller, the id, that the session exists and that the caller may see it.

        Refusals (401/400/404/403) are audited before they are raised.
        """
        now = self.clock()
        if isinstance(caller, AuthError):
            error = CallError(
                ErrorKind.UNAUTHENTICATED, UNAUTHORIZED, caller.message, {"reason": caller.reason}
            )
            raise await self._deny(error, origin, None, session_id, caller.reason, now)
        identity = caller
        try:
            session_id = parse_session_id(session_id)
        except CallError as exc:
            raise await self._deny(exc, origin, identity, session_id, exc.code, now) from None
        session = await self.storage.get_session(session_id)
        decision = evaluate_access(session, identity, now)
        if session is None or not decision.can_view:
            assert decision.error_code is not None and decision.reason is not None
            kind = ErrorKind.FORBIDDEN if decision.http_status == 403 else ErrorKind.NOT_FOUND
            details = {"sessionId": session_id}
            error = CallError(kind, decision.error_code, decision.message, details)
            action = "permission_denied" if kind is ErrorKind.FORBIDDEN else "join_denied"
            raise await self._deny(
                error, origin, identity, session_id, decision.reason, now, action=action
            )
        return SessionAccess(identity, session, decision, now, origin)

    async def can_join(self, access: SessionAccess) -> AccessDecision:
        """Whether the caller may join now; the attempt is audited either way."""
        decision = access.decision
        await self.audit.record(
            action="join_attempt" if decision.can_join else "join_denied",
            result=ALLOWED if decision.can_join else DENIED,
            origin=access.origin,
            identity=access.identity,
            session_id=access.session.id,
            reason=decision.reason,
            room_id=access.session.meeting_link,
            metadata={"minutesUntilSession": decision.minutes_until_session},
            now=access.now,
        )
        return decision

    async def generate_room(self, access: SessionAccess) -> PreparedRoom:
        """The session's room id, created on first use (only for a bookable session)."""
        session = access.session
        if not session.meeting_link:
            # A room is only created for a bookable session; joining still waits for the window.
            if access.decision.reason not in _ROOM_PREPARABLE:
                raise await self._refuse(access)
            stored = await self.storage.set_meeting_link(session.id, f"room-{uuid.uuid4()}")
            if stored is None:
                raise _session_not_found(session.id)
            session = stored
        users = await self.storage.get_users(session.participant_ids())
        await self._allowed(replace(access, session=session), "join_attempt")
        return PreparedRoom(session, users)

    async def start(self, access: SessionAccess) -> Started:
        """Record the call's start (first start wins); refused outside the join rules."""
        session = access.session
        if session.video_call_ended is not None:
            error = CallError(
                ErrorKind.CONFLICT,
                CALL_ALREADY_ENDED,
                "This call has already ended",
                {"sessionId": session.id},
            )
            raise await self._deny_joining(access, error)
        if session.video_call_started is None:
            if not access.decision.can_join:
                raise await self._refuse(access)
            result = await self.storage.mark_started(session.id, access.now)
            if result is None:
                raise _session_not_found(session.id)
            session = result.session
            # First start wins: a concurrent start sees the stored time, not its own.
            already_started = not result.applied
        else:
            already_started = True
        await self._allowed(
            replace(access, session=session),
            "call_start",
            metadata={"alreadyStarted": already_started},
        )
        return Started(session, already_started)

    async def end(
        self, access: SessionAccess, requested_end: Callable[[], datetime | None]
    ) -> Ended:
        """Record the call's end (first end wins).

        `requested_end` gives the client's end time (None: now); it is only asked for when the
        call actually ends here, so an already-ended call ignores the request body.
        """
        session = access.session
        started = session.video_call_started
        if started is None:
            error = CallError(
                ErrorKind.CONFLICT,
                CALL_NOT_STARTED,
                "This call has not started",
                {"sessionId": session.id},
            )
            raise await self._deny_joining(access, error)
        already_ended = session.video_call_ended is not None
        if not already_ended:
            ended_at = _end_time(requested_end(), started, access.now)
            duration = call_duration_minutes(started, ended_at)
            result = await self.storage.mark_ended(session.id, ended_at, duration)
            if result is None:
                raise _session_not_found(session.id)
            # Someone else may have ended it between our read and our write: theirs stands.
            already_ended = not result.applied
            session = result.session
        await self._allowed(
            replace(access, session=session),
            "call_end",
            duration=session.call_duration,
            metadata={"alreadyEnded": already_ended},
        )
        if not already_ended:
            await self._call_ended(
                CallEnded(
                    session_id=session.id,
                    room_id=session.meeting_link,
                    ended_by_user_id=access.identity.user_id,
                    ended_by_role=access.decision.participant_role or access.identity.role,
                    duration_minutes=session.call_duration,
                )
            )
        return Ended(session, already_ended)

    async def view(self, access: SessionAccess) -> SessionView:
        users = await self.storage.get_users(access.session.participant_ids())
        await self._allowed(access, "session_view")
        return SessionView(access.session, users, access.decision)

    async def history(self, identity: Identity, *, page: int, limit: int) -> History:
        """The caller's calls (admins: everyone's), newest first."""
        result: HistoryPage = await self.storage.list_history(
            identity.user_id, identity.role, page=page, limit=limit
        )
        user_ids = {uid for s in result.sessions for uid in s.participant_ids()}
        users = await self.storage.get_users(user_ids)
        return History(result.sessions, users, result.total)

    # -- WebSocket: join a room -----------------------------------------------------------

    async def join_room(
        self,
        identity: Identity,
        room_id: str,
        origin: Origin,
        seat: Callable[[Seat], Awaitable[T]],
    ) -> Joined[T]:
        """Let `identity` into the call of the session whose room this is.

        `seat` puts the caller into the media room (the face's relay) and may raise `RoomIsFull`;
        refusals, a full room and the successful join are each audited.
        """
        now = self.clock()
        session = await self.storage.find_session_by_room(room_id)
        if session is None:
            await self._audit_join(DENIED, origin, identity, None, room_id, now, ROOM_NOT_FOUND)
            raise CallError(
                ErrorKind.NOT_FOUND,
                ROOM_NOT_FOUND,
                "no session has this room id",
                {"roomId": room_id},
            )
        decision = evaluate_access(session, identity, now)
        if not decision.can_join:
            outsider = decision.http_status == 403
            code = PERMISSION_DENIED if outsider else decision.reason
            await self._audit_join(DENIED, origin, identity, session.id, room_id, now, code)
            details: dict[str, Any] = {"reason": decision.reason, "sessionId": session.id}
            if decision.minutes_until_session is not None:
                details["minutesUntilSession"] = decision.minutes_until_session
            raise CallError(
                ErrorKind.FORBIDDEN, code or PERMISSION_DENIED, decision.message, details
            )
        user = await self.storage.get_user(identity.user_id)
        taker = Seat(
            session_id=session.id,
            user_id=identity.user_id,
            user_name=user.name if user else ROLE_NAMES.get(identity.role, identity.role),
            role=decision.participant_role or identity.role,
        )
        try:
            seated = await seat(taker)
        except RoomIsFull as exc:  # a full room has participants: nothing to tidy up
            await self._audit_join(DENIED, origin, identity, session.id, room_id, now, ROOM_FULL)
            raise CallError(
                ErrorKind.CONFLICT, ROOM_FULL, exc.message, {"maxParticipants": exc.limit}
            ) from None
        await self._audit_join(ALLOWED, origin, identity, session.id, room_id, now, None)
        return Joined(session.id, seated)

    # -- the server's own decisions ------------------------------------------------------

    async def end_stale_calls(
        self,
        occupied_rooms: Collection[str],
        *,
        idle_after: timedelta | None,
        only_rooms: Collection[str] | None = None,
        reason: str | None = None,
    ) -> list[Ended]:
        """End started calls nobody is in any more: a room empty for `idle_after` (None: never
        for emptiness), or a call past the join window (2 hours after the session's start).

        `occupied_rooms`: the room ids with participants right now (the relay's). The end time
        is when the room was first seen empty (else now), so the duration is the call's. Each end
        is audited as `call_end` with the reason, and told to the `on_call_ended` listeners (a
        call still occupied is closed in the relay); a call ended meanwhile by a client is left.
        Run periodically by the composition root; a draining node runs it once for the calls it
        held (`only_rooms`), with its own `reason`.
        """
        now = self.clock()
        ended: list[Ended] = []
        open_calls = await self.storage.list_open_calls()
        still_open = {s.id for s in open_calls}
        for gone in set(self._empty_since) - still_open:
            del self._empty_since[gone]
        for session in open_calls:
            if only_rooms is not None and session.meeting_link not in only_rooms:
                continue
            occupied = session.meeting_link is not None and session.meeting_link in occupied_rooms
            if occupied:
                self._empty_since.pop(session.id, None)
                empty_since = None
            else:
                empty_since = self._empty_since.setdefault(session.id, now)
            if now > session.session_date + policy.JOIN_CLOSES_AFTER:
                why = WINDOW_CLOSED
            elif (
                empty_since is not None
                and idle_after is not None
                and (now - empty_since >= idle_after)
            ):
                why = reason or ROOM_EMPTY
            else:
                continue
            result = await self._end_by_server(session, empty_since or now, why, now)
            if result is not None:
                ended.append(result)
        return ended

    async def _end_by_server(
        self, session: SessionRecord, ended_at: datetime, reason: str, now: datetime
    ) -> Ended | None:
        started = session.video_call_started
        assert started is not None
        ended_at = max(ended_at, started)
        result = await self.storage.mark_ended(
            session.id, ended_at, call_duration_minutes(started, ended_at)
        )
        self._empty_since.pop(session.id, None)
        if result is None or not result.applied:
            return None  # gone, or ended by someone else in between: theirs stands
        stored = result.session
        await self.audit.record(
            action="call_end",
            result=ALLOWED,
            origin=SERVER_ORIGIN,
            identity=None,
            session_id=stored.id,
            reason=reason,
            room_id=stored.meeting_link,
            duration=stored.call_duration,
            metadata={"endedBy": "server", "alreadyEnded": False},
            now=now,
        )
        log.info(
            "ended call of session %s (%s, %s min)",
            stored.id,
            reason,
            stored.call_duration,
            extra={"call_id": stored.meeting_link},
        )
        # Past its window a call may still be occupied: its participants are told and let go.
        await self._call_ended(
            CallEnded(
                session_id=stored.id,
                room_id=stored.meeting_link,
                ended_by_user_id=None,
                ended_by_role=SERVER_ROLE,
                duration_minutes=stored.call_duration,
            )
        )
        return Ended(stored, already_ended=False)

    # -- audit helpers --------------------------------------------------------------------

    async def _deny(
        self,
        error: CallError,
        origin: Origin,
        identity: Identity | None,
        session_id: str | None,
        reason: str,
        now: datetime,
        *,
        action: str = "permission_denied",
    ) -> CallError:
        await self.audit.record(
            action=action,
            result=DENIED,
            origin=origin,
            identity=identity,
            session_id=session_id,
            reason=reason,
            error_message=error.message,
            now=now,
        )
        return error

    async def _deny_joining(self, access: SessionAccess, error: CallError) -> CallError:
        return await self._deny(
            error,
            access.origin,
            access.identity,
            access.session.id,
            error.code,
            access.now,
            action="join_denied",
        )

    async def _refuse(self, access: SessionAccess) -> CallError:
        """A participant may see the session but not join now: the reason is the code."""
        decision = access.decision
        assert decision.reason is not None
        error = CallError(
            ErrorKind.FORBIDDEN,
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
        return await self._deny_joining(access, error)

    async def _allowed(
        self,
        access: SessionAccess,
        action: str,
        *,
        duration: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        await self.audit.record(
            action=action,
            result=ALLOWED,
            origin=access.origin,
            identity=access.identity,
            session_id=access.session.id,
            now=access.now,
            room_id=access.session.meeting_link,
            duration=duration,
            metadata=metadata,
        )

    async def _audit_join(
        self,
        result: str,
        origin: Origin,
        identity: Identity,
        session_id: str | None,
        room_id: str,
        now: datetime,
        code: str | None,
    ) -> None:
        await self.audit.record(
            action="join_success" if result == ALLOWED else "join_denied",
            result=result,
            origin=origin,
            identity=identity,
            session_id=session_id,
            reason=code,
            room_id=room_id,
            now=now,
        )


def _session_not_found(session_id: str) -> CallError:
    return CallError(
        ErrorKind.NOT_FOUND, SESSION_NOT_FOUND, "Session not found", {"sessionId": session_id}
    )


def _end_time(requested: datetime | None, started: datetime, now: datetime) -> datetime:
    """Server time, or the client's end time if it lies after the start and not in the future."""
    if requested is None:
        return now
    if not started < requested <= now:
        raise CallError(
            ErrorKind.INVALID,
            INVALID_END_TIME,
            "endTime must lie after the call's start and not in the future",
            {
                "endTime": format_datetime(requested),
                "videoCallStarted": format_datetime(started),
                "now": format_datetime(now),
            },
        )
    return requested
