"""Wires metrics into the app: `/metrics`, the request middleware, the admin routes, and a
cleanup context that runs the quality sampler and stores end-of-call summaries and aggregates.

`setup_metrics(app)` must run after `setup_signaling(app)` (the relay's cleanup context must start
first so the relay exists when ours starts, and stop after ours) and before the app is frozen.

Environment:
    METRICS_MAX_CALLS        calls with per-call series (default 200; 0 disables them)
    METRICS_SAMPLE_INTERVAL  seconds between quality samples (default 1)
    METRICS_AUTH_TOKEN       when set, `/metrics` requires `Authorization: Bearer <token>`
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from metrics.aggregates import AggregateRecorder, MetricsStore
from metrics.collector import DEFAULT_MAX_CALLS, RelayCollector, RelayLike
from metrics.http import metrics_handler, request_metrics_middleware
from metrics.instruments import Instruments
from metrics.keys import METRICS_KEY
from metrics.quality import QualitySampler
from metrics.routes import add_admin_routes
from relay.stats import CallClosed
from smiling_relay.appkeys import RELAY_KEY, STORAGE_KEY
from smiling_relay.config import ConfigError

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
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry()
        self.instruments = Instruments(self.registry)
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

    # -- verbs (see metrics.hooks) ------------------------------------------------------

    def count_error(self, code: str, source: str) -> None:
        label = self.instruments.count_error(code, source)
        self.aggregates.count_error(label, datetime.fromtimestamp(self._wall(), UTC))

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
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning(
                "call %s closed outside the event loop; summary not stored", summary["roomId"]
            )
            return
        task = loop.create_task(self.store_summary(summary))
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
        find = getattr(store, "find_session_by_room", None)
        if find is None:
            return []
        session = await find(summary["roomId"])
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


def _env_int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _env_float(environ: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def setup_metrics(app: web.Application, *, environ: Mapping[str, str] | None = None) -> None:
    """Register `/metrics`; reads the relay from RELAY_KEY at scrape time."""
    env = os.environ if environ is None else environ
    metrics = Metrics(
        relay=lambda: app.get(RELAY_KEY),
        store=lambda: app.get(STORAGE_KEY),
        max_calls=_env_int(env, "METRICS_MAX_CALLS", DEFAULT_MAX_CALLS, 0),
        sample_interval=_env_float(env, "METRICS_SAMPLE_INTERVAL", DEFAULT_SAMPLE_INTERVAL, 0.1),
        auth_token=env.get("METRICS_AUTH_TOKEN", "").strip() or None,
    )
    app[METRICS_KEY] = metrics
    # Outermost, so it sees the final status and the whole handling time.
    app.middlewares.insert(0, request_metrics_middleware)
    app.router.add_get("/metrics", metrics_handler)
    add_admin_routes(app)
    app.cleanup_ctx.append(_metrics_context)


async def _metrics_context(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS_KEY]
    relay = app.get(RELAY_KEY)
    if relay is not None:
        relay.on_call_closed(metrics.on_call_closed)
    else:
        log.warning("no relay at startup: per-call summaries are disabled")
    tasks = [
        asyncio.create_task(metrics.run_sampler(), name="metrics-sampler"),
        asyncio.create_task(metrics.run_error_flusher(), name="metrics-error-flusher"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await metrics.drain()
