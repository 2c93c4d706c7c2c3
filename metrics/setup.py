"""The metrics of one app (`Metrics`) and `setup_metrics`, which registers `/metrics` and the
request middleware.

`Metrics.context` is a cleanup context that runs the quality sampler and stores end-of-call
summaries and aggregates; the composition root (`smiling_relay.app.create_app`) appends it after
the relay's, so the relay exists when it starts and stops after it. The settings (max calls,
sample interval, the `/metrics` token) come from `smiling_relay.config.Config`.

`Metrics` also implements three protocols its users define: the WebSocket face's
`SignalingObserver` (`ws_message`, `ws_error`), the REST face's `QualityReader` (the admin
endpoints over stored summaries and aggregates) and the domain's `calls.ratings.RatingObserver`
(`call_rated`), so metrics imports none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from metrics.aggregates import AggregateRecorder, MetricsStore, period_length, period_start
from metrics.collector import DEFAULT_MAX_CALLS, RelayCollector, RelayLike
from metrics.http import metrics_handler, request_metrics_middleware
from metrics.instruments import Instruments
from metrics.keys import METRICS_KEY
from metrics.quality import QualitySampler
from relay.stats import CallClosed

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_INTERVAL = 1.0
ERROR_FLUSH_INTERVAL = 60.0
SHUTDOWN_WRITE_TIMEOUT = 10.0


def summary_key(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One document per call: a room id can host several calls (everyone left, then rejoined)."""
    return {"period": "call", "roomId": summary["roomId"], "startedAt": summary["startedAt"]}


class Metrics:
    """Everything metrics keeps per app (stored at METRICS_KEY)."""

    def __init__(
        self,
        *,
        relay: Callable[[], RelayLike | None],
        store: Callable[[], MetricsStore | None],
        max_calls: int = DEFAULT_MAX_CALLS,
        sample_interval: float = DEFAULT_SAMPLE_INTERVAL,
        auth_token: str | None = None,
        ws_events_in: Iterable[str] = (),
        ws_events_out: Iterable[str] = (),
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`ws_events_in`/`ws_events_out`: the signaling protocol's event names by direction
        (their series exist from the start; other names are bounded, see `Instruments`)."""
        self.registry = CollectorRegistry()
        self.instruments = Instruments(self.registry, ws_events_in, ws_events_out)
        self.collector = RelayCollector(relay, max_calls=max_calls, clock=monotonic)
        self.registry.register(self.collector)
        self.sampler = QualitySampler(interval=sample_interval)
        self.aggregates = AggregateRecorder(
            store, clock=lambda: datetime.fromtimestamp(wall(), UTC)
        )
        self.relay = relay
        self.store = store
        self.sample_interval = sample_interval
        self.auth_token = auth_token
        self._monotonic = monotonic
        self._wall = wall
        self._writes: set[asyncio.Task[None]] = set()

    # -- verbs ----------------------------------------------------------------------------

    def count_error(self, code: str, source: str) -> None:
        """One error reported to a client (`source` "ws", "api" or "relay"); feeds both
        `smiling_relay_errors_total` and the hourly/daily `errorCounts`."""
        label = self.instruments.count_error(code, source)
        self.aggregates.count_error(label, datetime.fromtimestamp(self._wall(), UTC))

    # -- signaling.connection.SignalingObserver -------------------------------------------

    def ws_message(self, event: str, direction: str) -> None:
        """One signaling message, "in" (client → server) or "out"; unknown client event names
        are recorded as `unknown`, so clients cannot mint label values."""
        self.instruments.count_ws_message(event, direction)

    def ws_error(self, code: str) -> None:
        """An `error` event sent over the WebSocket."""
        self.count_error(code, "ws")

    # -- api.admin_metrics.QualityReader --------------------------------------------------

    def has_storage(self) -> bool:
        return self.store() is not None

    def is_call_active(self, room_id: str) -> bool:
        return room_id in self.sampler.calls

    async def call_summaries(self, room_id: str) -> list[dict[str, Any]]:
        """The room's summaries, oldest first, each with the participants' `ratings` of it."""
        store = self.store()
        if store is None:
            return []
        docs = await store.find_call_metrics({"period": "call", "roomId": room_id}, limit=100)
        docs.sort(key=lambda d: d["startedAt"])
        ratings = await store.find_call_metrics({"period": "rating", "roomId": room_id}, limit=100)
        attach_ratings(docs, ratings)
        return docs

    # -- calls.ratings.RatingObserver -----------------------------------------------------

    def call_rated(self, rating: int, reasons: Sequence[str], role: str) -> None:
        """A participant rated a call: the histogram now, the aggregates in the background."""
        self.instruments.observe_rating(rating, reasons, role)
        when = datetime.fromtimestamp(self._wall(), UTC)
        self._spawn(self.aggregates.record_rating(rating, when), "rating aggregate")

    def period_start(self, when: datetime, period: str) -> datetime:
        return period_start(when, period)

    def period_length(self, period: str) -> timedelta:
        return period_length(period)

    async def read_aggregates(
        self, period: str, start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        # Unflushed error counts first, so the answer includes errors up to now.
        await self.aggregates.flush_errors()
        return await self.aggregates.read(period, start, end)

    # -- sampling -----------------------------------------------------------------------

    def sample_once(self) -> None:
        relay = self.relay()
        if relay is not None:
            self.sampler.observe(relay.stream_samples(), self._monotonic(), self._wall())

    async def run_sampler(self) -> None:
        """Sample every `sample_interval` seconds on a fixed grid (no drift under load)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                self.sample_once()
            except Exception:
                log.exception("quality sampling failed")
            next_at += self.sample_interval
            now = loop.time()
            if next_at < now:  # fell behind (loop stalled): skip the missed ticks
                next_at = now + self.sample_interval
            await asyncio.sleep(next_at - now)

    async def run_error_flusher(self) -> None:
        while True:
            await asyncio.sleep(ERROR_FLUSH_INTERVAL)
            try:
                await self.aggregates.flush_errors()
            except Exception:
                log.exception("flushing error counts failed")

    # -- call end -----------------------------------------------------------------------

    def on_call_closed(self, closed: CallClosed) -> None:
        """Relay listener: observe, summarise, and store (in the background)."""
        try:
            self.instruments.call_duration.observe(
                max(closed.closed_at_wall - closed.opened_at_wall, 0.0)
            )
            summary = self.sampler.finish(closed, self._monotonic())
        except Exception:
            log.exception("summarising call %s failed", closed.call)
            return
        if summary is None:
            return
        self._observe_summary(summary)
        self._spawn_write(summary)

    def _observe_summary(self, summary: Mapping[str, Any]) -> None:
        mos = summary.get("audioMos")
        if mos:
            for path in mos["paths"]:
                self.instruments.call_audio_mos.observe(path["mos"])

    def _spawn_write(self, summary: dict[str, Any]) -> None:
        self._spawn(self.store_summary(summary), f"summary of call {summary['roomId']}")

    def _spawn(self, write: Coroutine[Any, Any, None], what: str) -> None:
        """Run a storage write in the background; `drain` waits for it at shutdown."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            write.close()
            log.warning("%s outside the event loop: not stored", what)
            return
        task = loop.create_task(_logged(write, what))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def store_summary(self, summary: dict[str, Any]) -> None:
        store = self.store()
        if store is None:
            self.instruments.call_summaries.labels("skipped").inc()
            return
        try:
            user_ids = await self._participant_users(store, summary)
            await store.upsert_call_metrics(summary_key(summary), values=summary)
            await self.aggregates.record_call(summary, user_ids)
        except Exception:
            self.instruments.call_summaries.labels("failed").inc()
            log.exception("storing the quality summary of call %s failed", summary["roomId"])
            return
        self.instruments.call_summaries.labels("stored").inc()

    @staticmethod
    async def _participant_users(store: MetricsStore, summary: dict[str, Any]) -> list[str]:
        """Attach the session id; return the user ids of the session's sides that took part."""
        summary.setdefault("sessionId", None)
        session = await store.find_session_by_room(summary["roomId"])
        if session is None:
            return []
        summary["sessionId"] = session.id
        roles = {s["role"] for s in summary.get("streams", ())}
        users = []
        if "client" in roles:
            users.append(session.client_id)
        if "psychologist" in roles:
            users.append(session.psychologist_id)
        return users

    async def drain(self) -> None:
        """Summarise calls still open, wait for pending writes, flush error counts."""
        now, wall = self._monotonic(), self._wall()
        for call in self.sampler.calls:
            summary = self.sampler.finish_interrupted(call, now, wall)
            if summary is not None:
                self._spawn_write(summary)
        if self._writes:
            _done, pending = await asyncio.wait(set(self._writes), timeout=SHUTDOWN_WRITE_TIMEOUT)
            for task in pending:
                log.warning("abandoning a quality-summary write at shutdown")
                task.cancel()
        try:
            await asyncio.wait_for(self.aggregates.flush_errors(), SHUTDOWN_WRITE_TIMEOUT)
        except Exception:
            log.exception("flushing error counts at shutdown failed")

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """A cleanup context: subscribe to the relay's call ends, run the sampler and the error
        flusher; at shutdown store what is still open. Append it after the relay's."""
        relay = self.relay()
        if relay is not None:
            relay.on_call_closed(self.on_call_closed)
        else:
            log.warning("no relay at startup: per-call summaries are disabled")
        tasks = [
            asyncio.create_task(self.run_sampler(), name="metrics-sampler"),
            asyncio.create_task(self.run_error_flusher(), name="metrics-error-flusher"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.drain()


async def _logged(write: Coroutine[Any, Any, None], what: str) -> None:
    try:
        await write
    except Exception:
        log.exception("storing the %s failed", what)


def attach_ratings(summaries: list[dict[str, Any]], ratings: list[dict[str, Any]]) -> None:
    """Give each summary the ratings of its call: a rating rates the latest call of the room
    that started before it was given (summaries oldest first). A rating given before any stored
    summary (the summary is written a moment after the call ends) waits for it."""
    for summary in summaries:
        summary["ratings"] = []
    for rating in sorted(ratings, key=lambda r: _aware(r["ratedAt"])):
        rated = _aware(rating["ratedAt"])
        target = None
        for summary in summaries:
            if _aware(summary["startedAt"]) <= rated:
                target = summary
        if target is not None:
            target["ratings"].append(
                {k: rating.get(k) for k in ("userId", "role", "rating", "reasons", "ratedAt")}
            )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def setup_metrics(app: web.Application, metrics: Metrics) -> None:
    """Register `/metrics` and the request middleware (outermost, so it sees the final status
    and the whole handling time). The composition root appends `metrics.context` itself."""
    app[METRICS_KEY] = metrics
    app.middlewares.insert(0, request_metrics_middleware)
    app.router.add_get("/metrics", metrics_handler)
