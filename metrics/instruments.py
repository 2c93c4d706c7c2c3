"""Prometheus objects for what the relay does not count itself: REST requests, WebSocket messages,
error codes and end-of-call observations. One `Instruments` per app, on that app's own registry.

Label values are bounded here, at the single place they enter Prometheus: an event name or error
code a client made up can never create a new series.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from metrics.collector import PREFIX

WS_DIRECTIONS = frozenset({"in", "out"})
ERROR_SOURCES = frozenset({"api", "ws", "relay"})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_SERVER_EVENT_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_ERROR_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,47}$")
MAX_EXTRA_EVENTS = 32
MAX_ERROR_CODES = 100

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CALL_DURATION_BUCKETS = (
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    2700.0,
    3600.0,
    5400.0,
    7200.0,
    10800.0,
)
MOS_BUCKETS = (1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4, 4.5)
# Participants' ratings are whole numbers 1..5: one bucket per value.
RATING_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0)
RATING_REASONS = ("audio", "video", "connection")
RATING_ROLES = ("client", "psychologist")
SUMMARY_RESULTS = ("stored", "failed", "skipped", "cut_short")


class Instruments:
    """The push-style metrics of one app (the relay's own counters are read by RelayCollector).

    `ws_events_in`/`ws_events_out` are the signaling protocol's event names (docs/signaling.md)
    by direction, handed in by the composition root (metrics does not import signaling).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        ws_events_in: Iterable[str] = (),
        ws_events_out: Iterable[str] = (),
        node: str = "single",
    ) -> None:
        events_in, events_out = tuple(ws_events_in), tuple(ws_events_out)
        self.node_info = Gauge(
            f"{PREFIX}_node_info",
            "Always 1; carries the node id this process runs as (NODE_ID, host-w<i>).",
            ("node",),
            registry=registry,
        )
        self.node_info.labels(node).set(1)
        self.placement_up = Gauge(
            f"{PREFIX}_placement_up",
            "1 while this node reaches the shared placement state (readiness), else 0.",
            registry=registry,
        )
        self.placement_up.set(1)
        self.draining = Gauge(
            f"{PREFIX}_draining",
            "1 while this node drains (takes no new calls, waits for its calls to end).",
            registry=registry,
        )
        self.known_ws_events = frozenset(events_in + events_out)
        self.http_request_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "REST request duration by route (canonical path), method and status.",
            ("route", "method", "status"),
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.ws_messages = Counter(
            f"{PREFIX}_websocket_messages",
            "WebSocket signaling messages by event and direction (in = client → server).",
            ("event", "direction"),
            registry=registry,
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Errors reported to clients, by error code and where (api, ws, relay).",
            ("code", "source"),
            registry=registry,
        )
        self.call_duration = Histogram(
            f"{PREFIX}_call_duration_seconds",
            "Duration of ended calls (first join to teardown).",
            buckets=CALL_DURATION_BUCKETS,
            registry=registry,
        )
        self.call_audio_mos = Histogram(
            f"{PREFIX}_call_audio_mos",
            "Estimated audio MOS (E-model) of ended calls that had audio both ways.",
            buckets=MOS_BUCKETS,
            registry=registry,
        )
        self.call_summaries = Counter(
            f"{PREFIX}_call_summaries",
            "End-of-call quality summaries, by result (stored, failed, skipped: no storage; "
            "cut_short: a dead node's call this node recovered from its last checkpoint).",
            ("result",),
            registry=registry,
        )
        self.summary_checkpoints = Counter(
            f"{PREFIX}_summary_checkpoints",
            "In-progress summaries of open calls written to storage, by result (stored, failed).",
            ("result",),
            registry=registry,
        )
        self.call_rating = Histogram(
            f"{PREFIX}_call_rating",
            "Participants' 1-5 ratings of a call's quality, by the rater's role.",
            ("role",),
            buckets=RATING_BUCKETS,
            registry=registry,
        )
        self.call_rating_reasons = Counter(
            f"{PREFIX}_call_rating_reasons",
            "What went wrong, as participants ticked it when rating a call.",
            ("reason",),
            registry=registry,
        )
        self._extra_events: set[str] = set()
        self._codes: set[str] = set()
        # Series that exist from the start (at 0), so rate() panels show 0 rather than nothing.
        for event in events_in:
            self.ws_messages.labels(event, "in")
        for event in events_out:
            self.ws_messages.labels(event, "out")
        for source in sorted(ERROR_SOURCES):
            self.errors.labels("INTERNAL_ERROR", source)
        self._codes.add("INTERNAL_ERROR")
        for result in SUMMARY_RESULTS:
            self.call_summaries.labels(result)
        for result in ("stored", "failed"):
            self.summary_checkpoints.labels(result)
        for role in RATING_ROLES:
            self.call_rating.labels(role)
        for reason in RATING_REASONS:
            self.call_rating_reasons.labels(reason)

    # -- label hygiene ------------------------------------------------------------------

    def ws_event_label(self, event: str, direction: str) -> str:
        if event in self.known_ws_events:
            return event
        # Server-sent events are ours (trusted); client-sent names are not.
        if (
            direction == "out"
            and _SERVER_EVENT_RE.match(event)
            and (event in self._extra_events or len(self._extra_events) < MAX_EXTRA_EVENTS)
        ):
            self._extra_events.add(event)
            return event
        return "unknown"

    def error_code_label(self, code: str) -> str:
        if code in self._codes:
            return code
        if _ERROR_CODE_RE.match(code) and len(self._codes) < MAX_ERROR_CODES:
            self._codes.add(code)
            return code
        return "OTHER"

    # -- verbs --------------------------------------------------------------------------

    def count_ws_message(self, event: str, direction: str) -> None:
        if direction not in WS_DIRECTIONS:
            raise ValueError(f"direction must be 'in' or 'out', got {direction!r}")
        self.ws_messages.labels(self.ws_event_label(event, direction), direction).inc()

    def count_error(self, code: str, source: str) -> str:
        """Count one error; returns the label the code was recorded under."""
        if source not in ERROR_SOURCES:
            raise ValueError(f"source must be one of {sorted(ERROR_SOURCES)}, got {source!r}")
        label = self.error_code_label(code)
        self.errors.labels(label, source).inc()
        return label

    def observe_rating(self, rating: int, reasons: Iterable[str], role: str) -> None:
        """One participant's rating; values outside the fixed sets are not labels."""
        self.call_rating.labels(role if role in RATING_ROLES else "other").observe(rating)
        for reason in reasons:
            if reason in RATING_REASONS:
                self.call_rating_reasons.labels(reason).inc()

    def set_node_state(self, *, placement_up: bool, draining: bool) -> None:
        self.placement_up.set(1 if placement_up else 0)
        self.draining.set(1 if draining else 0)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "OTHER"
        self.http_request_duration.labels(route, method, str(status)).observe(seconds)
