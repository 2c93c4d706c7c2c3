"""Hourly/daily aggregates (`videocallmetrics`) against both real storage backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metrics.aggregates import (
    AggregateRecorder,
    call_increments,
    derived_values,
    period_start,
    user_key,
)
from storage.base import Storage
from storage.sqlite import SQLiteStorage

NOW = datetime(2025, 12, 15, 14, 30, 0, tzinfo=UTC)
HOUR = datetime(2025, 12, 15, 14, 0, tzinfo=UTC)
DAY = datetime(2025, 12, 15, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "mongodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend: Any
    if request.param == "sqlite":
        backend = SQLiteStorage(tmp_path / "agg.sqlite3")
    else:
        mongomock_motor = pytest.importorskip("mongomock_motor")
        from storage.mongo import MongoStorage

        backend = MongoStorage(mongomock_motor.AsyncMongoMockClient()["smiling-steps-test"])
    await backend.initialize()
    yield backend
    await backend.close()


def summary(
    ended: datetime,
    *,
    duration: float = 600.0,
    participants: int = 2,
    setup: tuple[float, ...] = (0.5, 1.5),
) -> dict[str, Any]:
    return {
        "roomId": f"room-{ended.timestamp()}",
        "endedAt": ended,
        "durationSeconds": duration,
        "participants": participants,
        "participantsWithMedia": len(setup),
        "completed": len(setup) >= 2,
        "setupTimeSeconds": (
            {"avg": sum(setup) / len(setup), "total": sum(setup), "count": len(setup)}
            if setup
            else None
        ),
    }


def recorder(store: Storage, clock: Callable[[], datetime] = lambda: NOW) -> AggregateRecorder:
    return AggregateRecorder(lambda: store, clock=clock)


def test_period_start_and_increments() -> None:
    when = datetime(2025, 12, 15, 14, 59, 59, 999000, tzinfo=UTC)
    assert period_start(when, "hourly") == HOUR
    assert period_start(when, "daily") == DAY
    naive = datetime(2025, 12, 15, 14, 5)
    assert period_start(naive, "hourly") == HOUR
    with pytest.raises(ValueError, match="period"):
        period_start(when, "weekly")
    inc = call_increments(summary(NOW, participants=3, setup=(1.0,)))
    assert inc == {
        "totalCalls": 1,
        "completedCalls": 0,
        "totalDuration": 600.0,
        "totalAttempts": 3,
        "successfulConnections": 1,
        "failedConnections": 2,
        "totalConnectionTime": 1.0,
    }
    assert derived_values({}) == {"averageDuration": 0.0, "averageConnectionTime": 0.0}
    assert user_key("65a000000000000000000001") != user_key("65a000000000000000000002")
    assert len(user_key("x")) == 16


async def test_calls_add_up_in_their_hour_and_day(store: Storage) -> None:
    rec = recorder(store)
    client, psy = "65a000000000000000000001", "65a000000000000000000002"
    await rec.record_call(summary(NOW, duration=600, setup=(0.5, 1.5)), [client, psy])
    await rec.record_call(
        summary(NOW + timedelta(minutes=10), duration=300, setup=(1.0,)), [client]
    )
    # Next hour, same day.
    await rec.record_call(summary(NOW + timedelta(hours=1), duration=60, setup=()), [])

    hourly = await store.get_call_metrics({"period": "hourly", "date": HOUR})
    assert hourly is not None
    assert hourly["totalCalls"] == 2
    assert hourly["completedCalls"] == 1
    assert hourly["totalDuration"] == 900
    assert hourly["averageDuration"] == 450
    assert hourly["totalAttempts"] == 4
    assert hourly["successfulConnections"] == 3
    assert hourly["failedConnections"] == 1
    assert hourly["averageConnectionTime"] == 1.0
    assert hourly["uniqueUsers"] == 2
    assert hourly["errorCounts"] == {}
    assert client not in str(hourly)  # ids are stored one-way only

    daily = await store.get_call_metrics({"period": "daily", "date": DAY})
    assert daily is not None
    assert daily["totalCalls"] == 3
    assert daily["averageDuration"] == 320
    assert daily["uniqueUsers"] == 2
    assert daily["failedConnections"] == 3

    later = await store.get_call_metrics({"period": "hourly", "date": HOUR + timedelta(hours=1)})
    assert later is not None
    assert later["totalCalls"] == 1
    assert later["averageConnectionTime"] == 0.0


async def test_error_counts_are_bucketed_by_hour_and_flushed(store: Storage) -> None:
    rec = recorder(store)
    rec.count_error("ROOM_FULL", NOW)
    rec.count_error("ROOM_FULL", NOW)
    rec.count_error("AUTHENTICATION_FAILED", NOW - timedelta(hours=1))
    assert rec.pending_errors == 3
    await rec.flush_errors()
    assert rec.pending_errors == 0
    rec.count_error("ROOM_FULL", NOW)
    await rec.record_call(summary(NOW), [])  # a call end flushes too

    hourly = await store.get_call_metrics({"period": "hourly", "date": HOUR})
    assert hourly is not None
    assert hourly["errorCounts"] == {"ROOM_FULL": 3}
    assert hourly["totalCalls"] == 1
    earlier = await store.get_call_metrics({"period": "hourly", "date": HOUR - timedelta(hours=1)})
    assert earlier is not None
    assert earlier["errorCounts"] == {"AUTHENTICATION_FAILED": 1}
    daily = await store.get_call_metrics({"period": "daily", "date": DAY})
    assert daily is not None
    assert daily["errorCounts"] == {"ROOM_FULL": 3, "AUTHENTICATION_FAILED": 1}


async def test_failed_flush_keeps_the_counts(store: Storage) -> None:
    class Broken:
        async def get_call_metrics(self, key: Any) -> None:
            raise RuntimeError("database down")

    rec = AggregateRecorder(lambda: Broken(), clock=lambda: NOW)  # type: ignore[arg-type,return-value]
    rec.count_error("ROOM_FULL", NOW)
    with pytest.raises(RuntimeError):
        await rec.flush_errors()
    assert rec.pending_errors == 1


async def test_read_returns_the_range_oldest_first(store: Storage) -> None:
    rec = recorder(store)
    for hours in (3, 0, 1, 30):
        await rec.record_call(summary(NOW - timedelta(hours=hours)), [])
    docs = await rec.read("hourly", HOUR - timedelta(hours=3), HOUR + timedelta(hours=1))
    assert [d["date"] for d in docs] == [
        HOUR - timedelta(hours=3),
        HOUR - timedelta(hours=1),
        HOUR,
    ]
    days = await rec.read("daily", DAY - timedelta(days=2), DAY + timedelta(days=1))
    assert [(d["date"], d["totalCalls"]) for d in days] == [
        (DAY - timedelta(days=1), 1),
        (DAY, 3),
    ]


async def test_without_storage_nothing_happens() -> None:
    rec = AggregateRecorder(lambda: None, clock=lambda: NOW)
    rec.count_error("X", NOW)
    await rec.flush_errors()
    await rec.record_call(summary(NOW), [])
    assert await rec.read("hourly", NOW, NOW) == []
