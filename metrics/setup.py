"""The metrics of one app (`Metrics`) and `setup_metrics`, which registers `/metrics` and the
request middleware.

`Metrics.context` is a cleanup context that runs the quality sampler, checkpoints the summaries
of open calls, recovers those a dead node left behind (`metrics.summaries`) and stores end-of-call
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
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from metrics.aggregates import AggregateRecorder, MetricsStore, period_length, period_start
from metrics.collector import DEFAULT_MAX_CALLS, RelayCollector, RelayLike
from metrics.http import metrics_handler, request_metrics_middleware
from metrics.instruments import Instruments
from metrics.keys import METRICS_KEY
from metrics.quality import QualitySampler
from metrics.summaries import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_RECOVERY_INTERVAL,
    LiveNodes,
    SummaryLedger,
    summary_key,
    with_status,
)
from relay.stats import CallClosed

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_INTERVAL = 1.0
ERROR_FLUSH_INTERVAL = 60.0
SHUTDOWN_WRITE_TIMEOUT = 10.0

__all__ = ["Metrics", "setup_metrics", "summary_key"]


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
        node: str = "single",
        live_nodes: LiveNodes | None = None,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        recovery_interval: float = DEFAULT_RECOVERY_INTERVAL,
    ) -> None:
        """`ws_events_in`/`ws_events_out`: the signaling protocol's event names by direction
        (their series exist from the start; other names are bounded, see `Instruments`).

        `node`: this process's node id (`smiling_relay_node_info`, and whose checkpoints a
        summary is). `live_nodes`: the ids of the nodes with a live heartbeat (the fleet's
        shared state); None for one process, whose own open calls are then the only live ones.
        Every `checkpoint_interval` seconds the summaries of open calls are written
        (`in-progress`); every `recovery_interval` (and once at start) stale ones are closed
        as `cut-short` (docs/metrics.md)."""
        if checkpoint_interval <= 0 or recovery_interval <= 0:
            raise ValueError("checkpoint and recovery intervals must be > 0")
        self.registry = CollectorRegistry()
        self.instruments = Instruments(self.registry, ws_events_in, ws_events_out, node=node)
        self.collector = RelayCollector(relay, max_calls=max_calls, clock=monotonic)
        self.registry.register(self.collector)
        # process_cpu_seconds_total & co.: the fleet row's CPU per node
        ProcessCollector(registry=self.registry)
        self.sampler = QualitySampler(interval=sample_interval)
        clock = lambda: datetime.fromtimestamp(wall(), UTC)  # noqa: E731
        self.aggregates = AggregateRecorder(store, clock=clock)
        self.node = node
        self.summaries = SummaryLedger(
            store,
            self.aggregates,
            self.instruments,
            node=node,
            # Tells this process's checkpoints from an earlier one's under the same node id.
            instance=uuid.uuid4().hex[:12],
            live_nodes=live_nodes,
            checkpoint_interval=checkpoint_interval,
            clock=clock,
        )
        self.relay = relay
        self.store = store
        self.sample_interval = sample_interval
        self.checkpoint_interval = checkpoint_interval
        self.recovery_interval = recovery_interval
        self.auth_token = auth_token
        self._monotonic = monotonic
        self._wall = wall
        self._writes: set[asyncio.Task[None]] = set()

    # -- the node agent's state ---------------------------------------------------------

    def set_node_state(self, *, placement_up: bool, draining: bool) -> None:
        """What the node agent knows: whether placement's shared state answers, whether this
        node drains (`smiling_relay_placement_up`, `smiling_relay_draining`)."""
        self.instruments.set_node_state(placement_up=placement_up, draining=draining)

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
        """The room's summaries, oldest first, each with its `status` (`in-progress`,
        `complete`, `cut-short`) and the participants' `ratings` of it."""
        store = self.store()
        if store is None:
            return []
        found = await store.find_call_metrics({"period": "call", "roomId": room_id}, limit=100)
        docs = [with_status(d) for d in found]
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
            self.sampler.observe(
                relay.stream_samples(), self._monotonic(), self._wall(), relay.call_opened_at
            )

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

    async def checkpoint(self) -> int:
        """Write the in-progress summary of every open call now; returns how many."""
        return await self.summaries.write_checkpoints(self.sampler.snapshot(self._wall()))

    async def recover(self) -> int:
        """One recovery pass: stale in-progress summaries become cut-short (counted once)."""
        return await self.summaries.recover(self.sampler.calls)

    async def run_checkpointer(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            try:
                await self.checkpoint()
            except Exception:
                log.exception("checkpointing call summaries failed")

    async def run_recovery(self) -> None:
        """Once at start (a restart after a crash finds its own leftovers), then periodically."""
        while True:
            try:
                await self.recover()
            except Exception:
                log.exception("recovering cut-short call summaries failed")
            await asyncio.sleep(self.recovery_interval)

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
        """The final summary (`complete`), over the call's checkpoint; counted once."""
        await self.summaries.write_final(summary)

    def finish_open_calls(self) -> None:
        """Summarise the calls still open at shutdown (stored in the background)."""
        now, wall = self._monotonic(), self._wall()
        for call in self.sampler.calls:
            summary = self.sampler.finish_interrupted(call, now, wall)
            if summary is not None:
                self._spawn_write(summary)

    async def flush(self) -> None:
        """Wait for pending writes (bounded), then flush the error counts."""
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
        flusher; at shutdown summarise what is still open. Append it after the relay's."""
        relay = self.relay()
        if relay is not None:
            relay.on_call_closed(self.on_call_closed)
        else:
            log.warning("no relay at startup: per-call summaries are disabled")
        tasks = [
            asyncio.create_task(self.run_sampler(), name="metrics-sampler"),
            asyncio.create_task(self.run_error_flusher(), name="metrics-error-flusher"),
            asyncio.create_task(self.run_checkpointer(), name="metrics-checkpointer"),
            asyncio.create_task(self.run_recovery(), name="metrics-summary-recovery"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.finish_open_calls()

    async def writes(self, app: web.Application) -> AsyncIterator[None]:
        """A cleanup context that awaits the pending storage writes at shutdown. Append it
        before the relay's: the relay's close ends the calls the sampler had not seen yet,
        and their summaries must be stored before storage closes."""
        yield
        await self.flush()


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
    and the whole handling time). The composition root appends `metrics.writes` and
    `metrics.context` itself (around the relay's lifetime)."""
    app[METRICS_KEY] = metrics
    app.middlewares.insert(0, request_metrics_middleware)
    app.router.add_get("/metrics", metrics_handler)
