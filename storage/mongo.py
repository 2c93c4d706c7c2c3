"""MongoDB backend (motor), speaking the platform's own collections and field names.

Pointed at the Smiling Steps database it reads existing bookings as they are: `sessions`
documents with ObjectId `client`/`psychologist` references, `sessionDate`, `status`,
`paymentStatus`, `meetingLink`, … It writes only the video-call fields of a session, plus its
own `videocallauditlogs` and `videocallmetrics` documents.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from storage.base import (
    AuditEntry,
    DuplicateError,
    HistoryPage,
    SessionRecord,
    StorageError,
    Transition,
    UserRecord,
    is_object_id,
    to_utc_ms,
)

log = logging.getLogger(__name__)

AUDIT_TTL_SECONDS = 15_552_000  # six months, as the platform declares
DEFAULT_DATABASE = "smiling-steps"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (collection, keys, options) — the indexes the platform declares plus what our queries use.
INDEXES: tuple[tuple[str, list[tuple[str, int]], dict[str, Any]], ...] = (
    ("sessions", [("meetingLink", ASCENDING)], {"unique": True, "sparse": True}),
    ("sessions", [("videoCallStarted", ASCENDING)], {}),
    ("sessions", [("client", ASCENDING), ("sessionDate", ASCENDING)], {}),
    ("sessions", [("psychologist", ASCENDING), ("sessionDate", ASCENDING)], {}),
    ("sessions", [("status", ASCENDING), ("sessionDate", ASCENDING)], {}),
    ("videocallauditlogs", [("sessionId", ASCENDING), ("timestamp", DESCENDING)], {}),
    ("videocallauditlogs", [("userId", ASCENDING), ("timestamp", DESCENDING)], {}),
    ("videocallauditlogs", [("action", ASCENDING), ("timestamp", DESCENDING)], {}),
    ("videocallauditlogs", [("timestamp", ASCENDING)], {"expireAfterSeconds": AUDIT_TTL_SECONDS}),
    ("videocallmetrics", [("date", ASCENDING), ("period", ASCENDING)], {}),
)

# Never read more of a user than we need (the platform's documents hold password hashes).
_USER_PROJECTION = {"name": 1, "email": 1, "role": 1, "createdAt": 1}


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except DuplicateKeyError as exc:
        raise DuplicateError(str(exc)) from exc
    except PyMongoError as exc:
        raise StorageError(f"MongoDB error: {exc}") from exc


class MongoStorage:
    """`Storage` over a motor database (or a mongomock-motor one in tests)."""

    backend = "mongodb"

    def __init__(
        self,
        database: Any,
        *,
        client: Any | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._db = database
        self._client = client
        self._clock = clock
        self.users = database["users"]
        self.sessions = database["sessions"]
        self.audit = database["videocallauditlogs"]
        self.metrics = database["videocallmetrics"]

    @classmethod
    def from_uri(cls, uri: str, *, clock: Callable[[], datetime] | None = None) -> MongoStorage:
        """Connect lazily to `uri`; its path names the database (default `smiling-steps`)."""
        from motor.motor_asyncio import AsyncIOMotorClient

        client: Any = AsyncIOMotorClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        return cls(client.get_default_database(DEFAULT_DATABASE), client=client, clock=clock)

    def _now(self) -> datetime:
        return to_utc_ms(self._clock() if self._clock else datetime.now(UTC))

    async def initialize(self) -> None:
        for collection, keys, options in INDEXES:
            try:
                await self._db[collection].create_index(keys, **options)
            except OperationFailure as exc:
                # Pointed at the platform's database, an equivalent index may already exist
                # under another name or options; the queries still work, so carry on.
                log.warning("index %s on %s not created: %s", keys, collection, exc)
            except PyMongoError as exc:
                raise StorageError(f"cannot reach MongoDB: {exc}") from exc

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def prune_expired(self) -> int:
        # MongoDB expires audit entries itself through the TTL index on `timestamp`.
        return 0

    async def ping(self) -> bool:
        try:
            await self._db.command("ping")
        except Exception:  # any failure means "not answering"
            return False
        return True

    # -- users ------------------------------------------------------------------------------

    async def create_user(self, *, name: str, email: str | None, role: str) -> UserRecord:
        norm_email = email.strip().lower() if email else None
        with _errors():
            if norm_email and await self.users.find_one({"email": norm_email}, {"_id": 1}):
                raise DuplicateError(f"a user with email {norm_email} already exists")
            doc: dict[str, Any] = {"name": name, "role": role, "createdAt": self._now()}
            if norm_email:
                doc["email"] = norm_email
            result = await self.users.insert_one(doc)
        return _user({**doc, "_id": result.inserted_id})

    async def get_user(self, user_id: str) -> UserRecord | None:
        return (await self.get_users([user_id])).get(user_id)

    async def get_users(self, user_ids: Iterable[str]) -> dict[str, UserRecord]:
        oids = [ObjectId(u) for u in {u for u in user_ids if is_object_id(u)}]
        if not oids:
            return {}
        with _errors():
            docs = await self.users.find({"_id": {"$in": oids}}, _USER_PROJECTION).to_list(None)
        return {str(d["_id"]): _user(d) for d in docs}

    async def find_user_by_email(self, email: str) -> UserRecord | None:
        with _errors():
            doc = await self.users.find_one({"email": email.strip().lower()}, _USER_PROJECTION)
        return _user(doc) if doc else None

    # -- sessions ---------------------------------------------------------------------------

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
    ) -> SessionRecord:
        now = self._now()
        # No `meetingLink` key at all: the platform's unique sparse index counts explicit nulls.
        doc: dict[str, Any] = {
            "client": ObjectId(client_id),
            "psychologist": ObjectId(psychologist_id),
            "sessionType": session_type,
            "sessionDate": to_utc_ms(session_date),
            "status": status,
            "paymentStatus": payment_status,
            "isVideoCall": is_video_call,
            "createdAt": now,
            "updatedAt": now,
        }
        with _errors():
            result = await self.sessions.insert_one(doc)
        return _session({**doc, "_id": result.inserted_id})

    async def get_session(self, session_id: str) -> SessionRecord | None:
        if not is_object_id(session_id):
            return None
        with _errors():
            doc = await self.sessions.find_one({"_id": ObjectId(session_id)})
        return _session(doc) if doc else None

    async def find_session_by_room(self, room_id: str) -> SessionRecord | None:
        with _errors():
            doc = await self.sessions.find_one({"meetingLink": room_id})
        return _session(doc) if doc else None

    async def _guarded_update(
        self, session_id: str, condition: Mapping[str, Any], update: Mapping[str, Any]
    ) -> Transition | None:
        """Apply `update` atomically if `condition` holds; return the session as stored."""
        if not is_object_id(session_id):
            return None
        oid = ObjectId(session_id)
        with _errors():
            doc = await self.sessions.find_one_and_update(
                {"_id": oid, **condition},
                {"$set": {**update, "updatedAt": self._now()}},
                return_document=ReturnDocument.AFTER,
            )
            applied = doc is not None
            if doc is None:
                doc = await self.sessions.find_one({"_id": oid})
        return Transition(_session(doc), applied) if doc else None

    async def _session_after(
        self, session_id: str, condition: Mapping[str, Any], update: Mapping[str, Any]
    ) -> SessionRecord | None:
        result = await self._guarded_update(session_id, condition, update)
        return result.session if result else None

    async def set_meeting_link(self, session_id: str, room_id: str) -> SessionRecord | None:
        return await self._session_after(
            session_id, {"meetingLink": {"$in": [None, ""]}}, {"meetingLink": room_id}
        )

    async def mark_started(self, session_id: str, started_at: datetime) -> Transition | None:
        return await self._guarded_update(
            session_id,
            {"videoCallStarted": None},
            {"videoCallStarted": to_utc_ms(started_at), "status": "In Progress"},
        )

    async def mark_ended(
        self, session_id: str, ended_at: datetime, duration_minutes: int
    ) -> Transition | None:
        return await self._guarded_update(
            session_id,
            {"videoCallStarted": {"$ne": None}, "videoCallEnded": None},
            {
                "videoCallEnded": to_utc_ms(ended_at),
                "callDuration": duration_minutes,
                "status": "Completed",
            },
        )

    async def update_session(
        self,
        session_id: str,
        *,
        status: str | None = None,
        payment_status: str | None = None,
        session_date: datetime | None = None,
    ) -> SessionRecord | None:
        update: dict[str, Any] = {}
        if status is not None:
            update["status"] = status
        if payment_status is not None:
            update["paymentStatus"] = payment_status
        if session_date is not None:
            update["sessionDate"] = to_utc_ms(session_date)
        return await self._session_after(session_id, {}, update)

    async def list_open_calls(self, *, limit: int = 500) -> list[SessionRecord]:
        query = {"videoCallStarted": {"$ne": None}, "videoCallEnded": None}
        with _errors():
            cursor = (
                self.sessions.find(query)
                .sort([("videoCallStarted", ASCENDING), ("_id", ASCENDING)])
                .limit(limit)
            )
            docs = await cursor.to_list(None)
        return [_session(d) for d in docs]

    async def list_history(
        self, user_id: str, role: str, *, page: int = 1, limit: int = 10
    ) -> HistoryPage:
        query: dict[str, Any] = {"videoCallStarted": {"$ne": None}}
        if role != "admin":
            # Match both reference encodings: platform documents hold ObjectIds.
            refs: list[Any] = [user_id]
            if is_object_id(user_id):
                refs.append(ObjectId(user_id))
            query["$or"] = [{"client": {"$in": refs}}, {"psychologist": {"$in": refs}}]
        with _errors():
            total = await self.sessions.count_documents(query)
            cursor = (
                self.sessions.find(query)
                .sort([("videoCallStarted", DESCENDING), ("_id", DESCENDING)])
                .skip(max(page - 1, 0) * limit)
                .limit(limit)
            )
            docs = await cursor.to_list(None)
        return HistoryPage([_session(d) for d in docs], int(total))

    # -- audit ------------------------------------------------------------------------------

    async def add_audit(self, entry: AuditEntry) -> str:
        oid = ObjectId(entry.id) if entry.id and is_object_id(entry.id) else ObjectId()
        doc: dict[str, Any] = {
            "_id": oid,
            "sessionId": _oid_or_str(entry.session_id),
            "userId": _oid_or_str(entry.user_id),
            "userRole": entry.role,
            "action": entry.action,
            "result": entry.result,
            "reason": entry.reason,
            "timestamp": to_utc_ms(entry.timestamp),
            "metadata": dict(entry.metadata),
            "ipAddress": entry.ip_address,
            "userAgent": entry.user_agent,
            "roomId": entry.room_id,
            "errorCode": entry.error_code,
            "errorMessage": entry.error_message,
            "duration": entry.duration,
        }
        with _errors():
            await self.audit.insert_one({k: v for k, v in doc.items() if v is not None})
        return str(oid)

    async def list_audit(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        query: dict[str, Any] = {}
        if session_id is not None:
            query["sessionId"] = _oid_or_str(session_id)
        if user_id is not None:
            query["userId"] = _oid_or_str(user_id)
        with _errors():
            cursor = (
                self.audit.find(query)
                .sort([("timestamp", DESCENDING), ("_id", DESCENDING)])
                .limit(limit)
            )
            docs = await cursor.to_list(None)
        return [_audit(d) for d in docs]

    # -- videocallmetrics -------------------------------------------------------------------

    async def upsert_call_metrics(
        self,
        key: Mapping[str, Any],
        values: Mapping[str, Any] | None = None,
        increments: Mapping[str, int | float] | None = None,
    ) -> dict[str, Any]:
        if not key:
            raise ValueError("a metrics key needs at least one field")
        query = _doc(key)
        to_set = {k: v for k, v in _doc(values or {}).items() if k not in query}
        to_inc = {k: v for k, v in (increments or {}).items() if k not in query}
        update: dict[str, Any] = {}
        if to_set:
            update["$set"] = to_set
        if to_inc:
            update["$inc"] = to_inc
        with _errors():
            if not update:
                existing = await self.metrics.find_one(query, {"_id": 0})
                if existing is not None:
                    return _doc(existing)
                await self.metrics.insert_one(dict(query))
                return dict(query)
            doc = await self.metrics.find_one_and_update(
                query,
                update,
                upsert=True,
                return_document=ReturnDocument.AFTER,
                projection={"_id": 0},
            )
        return _doc(doc or {})

    async def set_call_metrics_if(
        self,
        key: Mapping[str, Any],
        values: Mapping[str, Any],
        *,
        where: Mapping[str, Sequence[Any]],
        insert: bool = False,
    ) -> dict[str, Any] | None:
        if not key:
            raise ValueError("a metrics key needs at least one field")
        query = _doc(key)
        to_set = {k: v for k, v in _doc(values).items() if k not in query}
        condition = {**query, **{name: _one_of(options) for name, options in where.items()}}
        with _errors():
            # One findAndModify: the check and the write are atomic on the server.
            # No projection: mongomock answers None to `_id: 0` with AFTER and no upsert.
            doc = await self.metrics.find_one_and_update(
                condition,
                {"$set": to_set} if to_set else {"$set": query},
                return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                doc.pop("_id", None)
                return _doc(doc)
            if not insert:
                return None
            # Only a missing document may be created: `$setOnInsert` on the bare key leaves an
            # existing one (whose condition failed above) untouched.
            result = await self.metrics.update_one(
                query, {"$setOnInsert": {**query, **to_set}}, upsert=True
            )
            if result.upserted_id is None:
                return None
            return {**query, **to_set}

    async def get_call_metrics(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        with _errors():
            doc = await self.metrics.find_one(_doc(key), {"_id": 0})
        return _doc(doc) if doc else None

    async def find_call_metrics(
        self, match: Mapping[str, Any], *, limit: int = 1000
    ) -> list[dict[str, Any]]:
        with _errors():
            cursor = self.metrics.find(_doc(match), {"_id": 0}).sort("_id", 1)
            docs = await cursor.limit(limit).to_list(None)
        return [_doc(d) for d in docs]


# -- document mapping -------------------------------------------------------------------------


def _oid_or_str(value: str | None) -> Any:
    if value is None:
        return None
    return ObjectId(value) if is_object_id(value) else value


def _ref(value: Any) -> str:
    """A reference as stored by the platform: ObjectId, string, or a populated sub-document."""
    if isinstance(value, Mapping):
        value = value.get("_id")
    return "" if value is None else str(value)


def _dt(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return to_utc_ms(value)
    if isinstance(value, str) and value:
        try:
            return to_utc_ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _doc(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _normalise(v) for k, v in value.items()}


def _one_of(options: Sequence[Any]) -> Any:
    """A query condition "the field holds one of `options`"; `$in` with None also matches a
    missing field, as the storage contract says. A single value is an equality (mongomock
    compares datetimes inside `$in` without its usual normalisation)."""
    values = [_normalise(v) for v in options]
    if len(values) == 1 and values[0] is not None:
        return values[0]
    return {"$in": values}


def _normalise(value: Any) -> Any:
    """Aware UTC datetimes everywhere (mongomock hands back naive ones)."""
    if isinstance(value, datetime):
        return to_utc_ms(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def _user(doc: Mapping[str, Any]) -> UserRecord:
    return UserRecord(
        id=str(doc["_id"]),
        name=str(doc.get("name") or ""),
        email=doc.get("email"),
        role=str(doc.get("role") or "client"),
        created_at=_dt(doc.get("createdAt")),
    )


def _session(doc: Mapping[str, Any]) -> SessionRecord:
    duration = doc.get("callDuration")
    return SessionRecord(
        id=str(doc["_id"]),
        client_id=_ref(doc.get("client")),
        psychologist_id=_ref(doc.get("psychologist")),
        session_date=_dt(doc.get("sessionDate")) or _EPOCH,
        status=str(doc.get("status") or "Pending"),
        payment_status=str(doc.get("paymentStatus") or "Pending"),
        session_type=str(doc.get("sessionType") or "Individual"),
        meeting_link=doc.get("meetingLink") or None,
        is_video_call=doc.get("isVideoCall") is not False,
        video_call_started=_dt(doc.get("videoCallStarted")),
        video_call_ended=_dt(doc.get("videoCallEnded")),
        call_duration=int(duration) if isinstance(duration, int | float) else None,
        created_at=_dt(doc.get("createdAt")),
        updated_at=_dt(doc.get("updatedAt")),
    )


def _audit(doc: Mapping[str, Any]) -> AuditEntry:
    def opt_str(name: str) -> str | None:
        value = doc.get(name)
        return None if value is None else str(value)

    duration = doc.get("duration")
    return AuditEntry(
        id=str(doc["_id"]),
        action=str(doc.get("action") or ""),
        result=str(doc.get("result") or ""),
        timestamp=_dt(doc.get("timestamp")) or _EPOCH,
        session_id=opt_str("sessionId"),
        user_id=opt_str("userId"),
        role=opt_str("userRole"),
        reason=opt_str("reason"),
        ip_address=opt_str("ipAddress"),
        user_agent=opt_str("userAgent"),
        room_id=opt_str("roomId"),
        error_code=opt_str("errorCode"),
        error_message=opt_str("errorMessage"),
        duration=int(duration) if isinstance(duration, int | float) else None,
        metadata=_doc(doc.get("metadata") or {}),
    )
