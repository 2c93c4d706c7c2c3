"""The repository interface both backends implement, and the records it speaks in.

Records use the platform's vocabulary (`sessions.status`, `paymentStatus`, `meetingLink`, …) with
Python names. All datetimes are timezone-aware UTC truncated to milliseconds, because MongoDB
stores milliseconds: truncating everywhere makes both backends return identical values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from bson import ObjectId

OBJECT_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")

# Session statuses used by the platform (its documents and code disagree on the exact list).
SESSION_STATUSES = (
    "Pending",
    "Booked",
    "Confirmed",
    "In Progress",
    "Completed",
    "Cancelled",
    "Declined",
)
PAYMENT_STATUSES = (
    "Pending",
    "Processing",
    "Paid",
    "Confirmed",
    "Verified",
    "Completed",
    "Failed",
    "Refunded",
)
SESSION_TYPES = ("Individual", "Couples", "Family", "Group")
ROLES = ("client", "psychologist", "admin")

# The platform's audit actions (`videocallauditlogs.action`).
AUDIT_ACTIONS = (
    "join_attempt",
    "join_success",
    "join_denied",
    "call_start",
    "call_end",
    "connection_established",
    "connection_failed",
    "permission_denied",
    "error_occurred",
    # Ours: a participant or admin read a session's details.
    "session_view",
)
AUDIT_RESULTS = ("allowed", "denied", "error")


def new_id() -> str:
    """A fresh 24-hex ObjectId string (the id format of both backends)."""
    return str(ObjectId())


def is_object_id(value: object) -> bool:
    return isinstance(value, str) and OBJECT_ID_RE.fullmatch(value) is not None


def to_utc_ms(value: datetime) -> datetime:
    """Normalise to aware UTC with millisecond precision (naive input is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def format_datetime(value: datetime) -> str:
    """ISO 8601 with milliseconds and `Z`, the way JavaScript's `Date.toJSON()` prints."""
    value = to_utc_ms(value)
    # not strftime: glibc's %Y does not pad years before 1000 to four digits ("999-12-31")
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_datetime(text: str) -> datetime:
    """Parse an ISO 8601 timestamp written by `format_datetime` (or any offset form)."""
    return to_utc_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))


@dataclass(frozen=True)
class UserRecord:
    id: str
    name: str
    email: str | None
    role: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class SessionRecord:
    """A booking (`sessions` document) with its video-call fields."""

    id: str
    client_id: str
    psychologist_id: str
    session_date: datetime
    status: str
    payment_status: str
    session_type: str = "Individual"
    meeting_link: str | None = None
    is_video_call: bool = True
    video_call_started: datetime | None = None
    video_call_ended: datetime | None = None
    call_duration: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def participant_ids(self) -> tuple[str, str]:
        return (self.client_id, self.psychologist_id)


@dataclass(frozen=True)
class AuditEntry:
    """One access attempt or call event (`videocallauditlogs` document)."""

    action: str
    result: str
    timestamp: datetime
    session_id: str | None = None
    user_id: str | None = None
    role: str | None = None
    reason: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    room_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    duration: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Transition:
    """The session after a guarded state change, and whether this call made the change."""

    session: SessionRecord
    applied: bool


@dataclass(frozen=True)
class HistoryPage:
    sessions: list[SessionRecord]
    total: int


class StorageError(RuntimeError):
    """The backend failed (unreachable database, corrupt file, …)."""


class DuplicateError(StorageError):
    """A uniqueness rule was violated (e.g. a user email already exists)."""


@runtime_checkable
class Storage(Protocol):
    """What the API, the signaling side and the metrics side need from persistence.

    Every mutating call that guards a state transition is atomic in the backend: two
    concurrent callers can never both win `set_meeting_link`, `mark_started` or `mark_ended`.
    """

    backend: str

    async def initialize(self) -> None:
        """Create tables/indexes and run migrations. Idempotent."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True if the backend answers."""

    async def prune_expired(self) -> int:
        """Delete what the retention rules say is too old (audit entries after six months, the
        platform's TTL); return how many records went. Run periodically by the app."""

    # users
    async def create_user(self, *, name: str, email: str | None, role: str) -> UserRecord: ...

    async def get_user(self, user_id: str) -> UserRecord | None: ...

    async def get_users(self, user_ids: Iterable[str]) -> dict[str, UserRecord]: ...

    async def find_user_by_email(self, email: str) -> UserRecord | None: ...

    # sessions
    async def create_session(
        self,
        *,
        client_id: str,
        psychologist_id: str,
        session_date: datetime,
        status: str,
        payment_status: str,
        session_type: str = "Individual",
        is_video_call: bool = True,
    ) -> SessionRecord: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def find_session_by_room(self, room_id: str) -> SessionRecord | None: ...

    async def set_meeting_link(self, session_id: str, room_id: str) -> SessionRecord | None:
        """Store `room_id` only if the session has none; return the session as stored.

        The returned `meeting_link` is whichever value won (possibly an earlier one).
        None if the session does not exist.
        """

    async def mark_started(self, session_id: str, started_at: datetime) -> Transition | None:
        """First start wins: set `videoCallStarted` and status `In Progress` if not started yet.

        Returns the session as stored afterwards and whether this call started it.
        None if the session does not exist.
        """

    async def mark_ended(
        self, session_id: str, ended_at: datetime, duration_minutes: int
    ) -> Transition | None:
        """First end wins: set `videoCallEnded`, `callDuration` and status `Completed`.

        Only applies to a started, not yet ended call (`applied` False otherwise).
        None if the session does not exist.
        """

    async def list_open_calls(self, *, limit: int = 500) -> list[SessionRecord]:
        """Sessions whose call started and has not ended, oldest start first (the server ends
        stale ones: `calls.service.CallService.end_stale_calls`)."""

    async def update_session(
        self,
        session_id: str,
        *,
        status: str | None = None,
        payment_status: str | None = None,
        session_date: datetime | None = None,
    ) -> SessionRecord | None: ...

    async def list_history(
        self, user_id: str, role: str, *, page: int = 1, limit: int = 10
    ) -> HistoryPage:
        """Sessions with a started call where the user takes part (admins: all), newest first."""

    # audit log
    async def add_audit(self, entry: AuditEntry) -> str: ...

    async def list_audit(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first."""

    # videocallmetrics: a small generic document store keyed by a few fields.
    async def upsert_call_metrics(
        self,
        key: Mapping[str, Any],
        values: Mapping[str, Any] | None = None,
        increments: Mapping[str, int | float] | None = None,
    ) -> dict[str, Any]:
        """Create or update the document identified by `key` (equality on each key field).

        `values` are set, `increments` are added to numeric fields (missing fields count as 0).
        Values may be JSON-like scalars, lists, dicts and datetimes. Returns the document
        (key fields included, without the backend's id).
        """

    async def set_call_metrics_if(
        self,
        key: Mapping[str, Any],
        values: Mapping[str, Any],
        *,
        where: Mapping[str, Sequence[Any]],
        insert: bool = False,
    ) -> dict[str, Any] | None:
        """Compare-and-set: set `values` on the document identified by `key` only if, for every
        item of `where`, the document's field holds one of the listed values (a missing field
        holds None). With `insert`, a missing document is created (key fields + `values`).

        Returns the document afterwards, or None when nothing was written (the condition did
        not hold, or no document and not `insert`). Atomic in the backend: of two callers
        making the same transition, only one gets a document back.
        """

    async def get_call_metrics(self, key: Mapping[str, Any]) -> dict[str, Any] | None: ...

    async def find_call_metrics(
        self, match: Mapping[str, Any], *, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Documents whose fields equal every item of `match`."""


def call_duration_minutes(started: datetime, ended: datetime) -> int:
    """Whole minutes, rounded half up like the platform's `Math.round((end - start) / 60000)`."""
    elapsed_ms = round((to_utc_ms(ended) - to_utc_ms(started)).total_seconds() * 1000)
    if elapsed_ms <= 0:
        return 0
    return (elapsed_ms + 30_000) // 60_000
