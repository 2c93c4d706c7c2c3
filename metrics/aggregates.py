"""Hourly and daily aggregates in the platform's `videocallmetrics` shape, updated at call end.

One document per `(period, date)` where `date` is the UTC start of the hour or day:

    totalCalls, completedCalls, totalDuration, averageDuration (seconds),
    totalAttempts, successfulConnections, failedConnections,
    totalConnectionTime, averageConnectionTime (seconds), errorCounts {code: n},
    uniqueUsers, userKeys (internal: hashed user ids behind uniqueUsers), updatedAt

A call is attributed to the period in which it ended. "Attempts" are participants that joined a
call; a connection is successful when the relay received media from that participant (a setup
time exists); a call is completed when at least two participants had media. Error counts are
bucketed by the hour they happened in and written at the next call end, every minute, and at
shutdown.

Counters go through the storage's atomic `increments`; the derived averages, the error map and
the user set are read-modify-write under one lock (the relay is a single process per deployment).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from storage.base import SessionRecord

log = logging.getLogger(__name__)

PERIODS = ("hourly", "daily")
USER_KEY_LENGTH = 16


class MetricsStore(Protocol):
    """The part of `storage.base.Storage` the metrics side uses."""

    async def upsert_call_metrics(
        self,
        key: Mapping[str, Any],
        values: Mapping[str, Any] | None = None,
        increments: Mapping[str, int | float] | None = None,
    ) -> dict[str, Any]: ...

    async def set_call_metrics_if(
        self,
        key: Mapping[str, Any],
        values: Mapping[str, Any],
        *,
        where: Mapping[str, Sequence[Any]],
        insert: bool = False,
    ) -> dict[str, Any] | None: ...

    async def get_call_metrics(self, key: Mapping[str, Any]) -> dict[str, Any] | None: ...

    async def find_call_metrics(
        self, match: Mapping[str, Any], *, limit: int = 1000
    ) -> list[dict[str, Any]]: ...

    async def find_session_by_room(self, room_id: str) -> SessionRecord | None:
        """The session a call's room belongs to (to attribute its summary)."""
        ...


def period_start(when: datetime, period: str) -> datetime:
    """UTC start of the hour or day containing `when`."""
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    if period == "hourly":
        return when.replace(minute=0, second=0, microsecond=0)
    if period == "daily":
        return when.replace(hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown period {period!r}")


def period_length(period: str) -> timedelta:
    return timedelta(hours=1) if period == "hourly" else timedelta(days=1)


def aggregate_key(period: str, start: datetime) -> dict[str, Any]:
    return {"period": period, "date": start}


def user_key(user_id: str) -> str:
    """A short one-way key for a user id: counts distinct users without storing the id."""
    digest = hashlib.sha256(f"smiling-relay/uniqueUsers/{user_id}".encode()).hexdigest()
    return digest[:USER_KEY_LENGTH]


def call_increments(summary: Mapping[str, Any]) -> dict[str, int | float]:
    """What one ended call adds to its hour's and day's counters."""
    setup = summary.get("setupTimeSeconds") or {}
    got_media = int(summary.get("participantsWithMedia") or 0)
    participants = int(summary.get("participants") or 0)
    return {
        "totalCalls": 1,
        "completedCalls": 1 if summary.get("completed") else 0,
        "totalDuration": float(summary.get("durationSeconds") or 0.0),
        "totalAttempts": participants,
        "successfulConnections": got_media,
        "failedConnections": max(participants - got_media, 0),
        "totalConnectionTime": float(setup.get("total", 0.0)) if setup else 0.0,
    }


def derived_values(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The averages, recomputed from the totals of an aggregate document."""
    calls = doc.get("totalCalls") or 0
    connections = doc.get("successfulConnections") or 0
    ratings = doc.get("ratingCount") or 0
    # Only periods with ratings carry their mean (documents without ratings stay as they were).
    rating = {"averageRating": round(doc.get("ratingSum", 0) / ratings, 3)} if ratings else {}
    return {
        **rating,
        "averageDuration": round(doc.get("totalDuration", 0.0) / calls, 3) if calls else 0.0,
        "averageConnectionTime": (
            round(doc.get("totalConnectionTime", 0.0) / connections, 3) if connections else 0.0
        ),
    }


class AggregateRecorder:
    """Writes the hourly/daily aggregates; holds error counts until they are flushed."""

    def __init__(
        self,
        store: Callable[[], MetricsStore | None],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._clock = clock
        self._lock = asyncio.Lock()
        self._pending_errors: dict[datetime, Counter[str]] = {}

    # -- errors -------------------------------------------------------------------------

    def count_error(self, code: str, when: datetime | None = None) -> None:
        hour = period_start(when or self._clock(), "hourly")
        self._pending_errors.setdefault(hour, Counter())[code] += 1

    @property
    def pending_errors(self) -> int:
        return sum(sum(c.values()) for c in self._pending_errors.values())

    async def flush_errors(self) -> None:
        store = self._store()
        if store is None or not self._pending_errors:
            return
        async with self._lock:
            await self._flush_errors_locked(store)

    async def _flush_errors_locked(self, store: MetricsStore) -> None:
        pending, self._pending_errors = self._pending_errors, {}
        by_key: dict[tuple[str, datetime], Counter[str]] = {}
        for hour, counts in pending.items():
            for period in PERIODS:
                by_key.setdefault((period, period_start(hour, period)), Counter()).update(counts)
        try:
            for (period, start), counts in sorted(by_key.items()):
                key = aggregate_key(period, start)
                doc = await store.get_call_metrics(key) or {}
                merged = Counter({k: int(v) for k, v in (doc.get("errorCounts") or {}).items()})
                merged.update(counts)
                await store.upsert_call_metrics(
                    key, values={"errorCounts": dict(merged), "updatedAt": self._clock()}
                )
        except Exception:
            # Keep the counts for the next attempt rather than losing them.
            for hour, counts in pending.items():
                self._pending_errors.setdefault(hour, Counter()).update(counts)
            raise

    # -- calls --------------------------------------------------------------------------

    async def record_call(self, summary: Mapping[str, Any], user_ids: Iterable[str]) -> None:
        """Add an ended call to the aggregates of the hour and day it ended in."""
        store = self._store()
        if store is None:
            return
        ended = summary["endedAt"]
        increments = call_increments(summary)
        keys = {user_key(u) for u in user_ids}
        async with self._lock:
            for period in PERIODS:
                key = aggregate_key(period, period_start(ended, period))
                doc = await store.upsert_call_metrics(key, increments=increments)
                users = set(doc.get("userKeys") or ()) | keys
                values = derived_values(doc)
                values.update(
                    userKeys=sorted(users), uniqueUsers=len(users), updatedAt=self._clock()
                )
                if "errorCounts" not in doc:
                    values["errorCounts"] = {}
                await store.upsert_call_metrics(key, values=values)
            if self._pending_errors:
                await self._flush_errors_locked(store)

    # -- ratings ------------------------------------------------------------------------

    async def record_rating(self, rating: int, when: datetime) -> None:
        """Add a participant's 1–5 call rating to the aggregates of the hour and day it was given
        (`ratingCount`, `ratingSum`, `averageRating`)."""
        store = self._store()
        if store is None:
            return
        async with self._lock:
            for period in PERIODS:
                key = aggregate_key(period, period_start(when, period))
                doc = await store.upsert_call_metrics(
                    key, increments={"ratingCount": 1, "ratingSum": rating}
                )
                values = derived_values(doc)
                values["updatedAt"] = self._clock()
                if "errorCounts" not in doc:
                    values["errorCounts"] = {}
                await store.upsert_call_metrics(key, values=values)

    async def read(self, period: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Aggregates of `period` whose `date` lies in [start, end), oldest first."""
        store = self._store()
        if store is None:
            return []
        docs = await store.find_call_metrics({"period": period}, limit=100_000)
        found = [
            d
            for d in docs
            if isinstance(d.get("date"), datetime) and start <= _aware(d["date"]) < end
        ]
        found.sort(key=lambda d: _aware(d["date"]))
        return found


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
