"""A Prometheus collector that reads the relay's own counters at scrape time.

The relay never imports prometheus-client: it keeps plain counters (`relay.stats`) and this
collector turns them into metric families when Prometheus scrapes `/metrics`. Per-call series
carry a `call` label (the room id) and disappear with the call, because the collector only ever
reports what the relay currently holds.

A cap (`METRICS_MAX_CALLS`, default 200) bounds the number of calls that get per-call series. Calls
are admitted in the order they were first seen and keep their series until they end (so a call's
series never flap); calls beyond the cap are left out, counted in
`smiling_relay_metrics_calls_over_cap` / `smiling_relay_metrics_dropped_calls_total`, and
admitted as soon as a slot frees up (oldest first). Relay-wide series are never capped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from relay.stats import CallClosed, ConnectionFailure, Histogram, RelayStats, StreamSample

log = logging.getLogger(__name__)

PREFIX = "smiling_relay"
DEFAULT_MAX_CALLS = 200
STREAM_LABELS = ("call", "participant", "role", "source", "kind", "direction")
MAX_REASON_LENGTH = 64
# Failure reasons the relay reports (relay/participant.py); exported at 0 before the first
# failure so rate() and alerts have a series to work on.
KNOWN_FAILURE_REASONS = tuple(ConnectionFailure)


class RelayLike(Protocol):
    """What the collector (and the quality sampler) read from `relay.sfu.Relay`."""

    @property
    def stats(self) -> RelayStats: ...

    def stream_samples(self) -> Iterable[StreamSample]: ...

    def call_opened_at(self, call: str) -> float | None: ...

    def active_calls(self) -> int: ...

    def active_participants(self) -> int: ...

    def active_tracks(self) -> int: ...

    def on_call_closed(self, callback: Callable[[CallClosed], None]) -> None: ...


StreamKey = tuple[str, str, str, str, str, str]  # STREAM_LABELS order


@dataclass(slots=True)
class _StreamRow:
    """One exported stream (several relay streams with the same labels are summed)."""

    codec: str = ""
    packets: int = 0
    bytes: int = 0
    packets_lost: int = 0
    fraction_lost: float = 0.0
    jitter_seconds: float = 0.0
    rtt_seconds: float | None = None
    nacks: int = 0
    retransmits: int = 0
    keyframe_requests: int = 0
    keyframes: int = 0
    frames: int = 0
    frame_width: int = 0
    frame_height: int = 0
    remb_bps: int | None = None
    estimate_bps: int | None = None
    started_at: float = math.inf


@dataclass(slots=True)
class _CallRows:
    streams: dict[StreamKey, _StreamRow] = field(default_factory=dict)
    participants: set[str] = field(default_factory=set)
    first_seen: float = math.inf


def stream_key(sample: StreamSample) -> StreamKey:
    s = sample.stats
    return (sample.call, sample.participant, sample.role, sample.source, s.kind, s.direction)


def _merge(row: _StreamRow, sample: StreamSample) -> None:
    s = sample.stats
    row.codec = row.codec or s.codec
    row.packets += s.packets
    row.bytes += s.bytes
    row.packets_lost += max(s.packets_lost, 0)
    row.fraction_lost = max(row.fraction_lost, s.fraction_lost)
    row.jitter_seconds = max(row.jitter_seconds, s.jitter_seconds)
    if s.rtt_seconds is not None:
        row.rtt_seconds = (
            s.rtt_seconds if row.rtt_seconds is None else max(row.rtt_seconds, s.rtt_seconds)
        )
    row.nacks += s.nacks
    row.retransmits += s.retransmits
    row.keyframe_requests += s.keyframe_requests
    row.keyframes += s.keyframes
    row.frames += s.frames
    if s.frame_width and s.frame_height:
        row.frame_width, row.frame_height = s.frame_width, s.frame_height
    if s.remb_bps is not None:
        row.remb_bps = s.remb_bps
    if s.estimate_bps is not None:
        row.estimate_bps = s.estimate_bps
    row.started_at = min(row.started_at, s.started_at)


def _histogram_buckets(hist: Histogram) -> list[tuple[str, float]]:
    return [(floatToGoString(bound), float(count)) for bound, count in hist.cumulative()]


def _clean_reason(reason: str) -> str:
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(reason))
    return text[:MAX_REASON_LENGTH] or "unknown"


class RelayCollector(Collector):
    """Reads `relay.stats` and `relay.stream_samples()` whenever the registry is collected."""

    def __init__(
        self,
        relay: Callable[[], RelayLike | None],
        *,
        max_calls: int = DEFAULT_MAX_CALLS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_calls < 0:
            raise ValueError("max_calls must be >= 0")
        self._relay = relay
        self.max_calls = max_calls
        self._clock = clock
        # Calls that have per-call series, in admission order (dict as an ordered set).
        self._admitted: dict[str, None] = {}
        # Calls currently left out because of the cap, and how many ever were.
        self._dropped: set[str] = set()
        self._dropped_total = 0
        self._last_collect_seconds = 0.0

    def describe(self) -> Iterable[Metric]:
        # Nothing up front: the families depend on the relay's state at scrape time.
        return []

    # -- admission ----------------------------------------------------------------------

    def _admit(self, calls: dict[str, _CallRows]) -> tuple[list[str], list[str]]:
        for gone in [c for c in self._admitted if c not in calls]:
            del self._admitted[gone]
        self._dropped &= calls.keys()
        waiting = sorted(
            (c for c in calls if c not in self._admitted),
            key=lambda c: (calls[c].first_seen, c),
        )
        dropped: list[str] = []
        for call in waiting:
            if len(self._admitted) < self.max_calls:
                self._admitted[call] = None
                self._dropped.discard(call)
            else:
                dropped.append(call)
                if call not in self._dropped:
                    self._dropped.add(call)
                    self._dropped_total += 1
        return list(self._admitted), dropped

    # -- collection ---------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        relay = self._relay()
        if relay is not None:
            try:
                yield from self._collect_relay(relay)
            except Exception:  # a scrape must never take the relay down
                log.exception("collecting relay metrics failed")
        yield from self._collect_self()
        self._last_collect_seconds = time.perf_counter() - started

    def _collect_self(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_metrics_max_calls",
            "Configured cap on calls with per-call series (METRICS_MAX_CALLS).",
            value=self.max_calls,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_metrics_calls_over_cap",
            "Active calls currently left out of the per-call series because of the cap.",
            value=len(self._dropped),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_metrics_dropped_calls",
            "Calls that were ever left out of the per-call series because of the cap.",
            value=self._dropped_total,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_metrics_collect_duration_seconds",
            "Time the previous scrape spent reading the relay.",
            value=self._last_collect_seconds,
        )

    def _collect_relay(self, relay: RelayLike) -> Iterator[Metric]:
        yield from self._relay_wide(relay)

        calls: dict[str, _CallRows] = {}
        by_direction = {"in": 0, "out": 0}
        for sample in relay.stream_samples():
            by_direction[sample.stats.direction] = by_direction.get(sample.stats.direction, 0) + 1
            rows = calls.get(sample.call)
            if rows is None:
                rows = calls[sample.call] = _CallRows()
            rows.participants.add(sample.participant)
            rows.first_seen = min(rows.first_seen, sample.stats.started_at)
            key = stream_key(sample)
            row = rows.streams.get(key)
            if row is None:
                row = rows.streams[key] = _StreamRow()
            _merge(row, sample)

        streams = GaugeMetricFamily(
            f"{PREFIX}_active_streams",
            "Media streams the relay holds, by direction: in = received from publishers, "
            "out = forwarded to subscribers (all calls, never capped).",
            labels=("direction",),
        )
        for direction, count in sorted(by_direction.items()):
            streams.add_metric((direction,), count)
        yield streams

        admitted, dropped = self._admit(calls)
        yield GaugeMetricFamily(
            f"{PREFIX}_metrics_dropped_series",
            "Per-stream series left out of the previous scrape because of the call cap.",
            value=sum(len(calls[c].streams) for c in dropped),
        )
        yield from self._per_call(calls, admitted)

    def _relay_wide(self, relay: RelayLike) -> Iterator[Metric]:
        stats = relay.stats
        yield GaugeMetricFamily(
            f"{PREFIX}_active_calls", "Calls (rooms) open on the relay.", value=relay.active_calls()
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_active_participants",
            "Participants currently in a call on the relay.",
            value=relay.active_participants(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_active_tracks",
            "Published tracks currently received by the relay.",
            value=relay.active_tracks(),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_calls_started",
            "Calls (rooms) opened since the relay started.",
            value=stats.rooms_opened,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_calls_ended",
            "Calls (rooms) torn down since the relay started.",
            value=stats.rooms_closed,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_participants_joined",
            "Participants that joined a call.",
            value=stats.participants_joined,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_participants_left",
            "Participants that left a call (any reason).",
            value=stats.participants_left,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_media_path_errors",
            "Received packets whose handling raised an exception (relay bugs, not bad packets).",
            value=stats.media_path_errors,
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_connection_failures",
            "WebRTC connections that failed, by reason (ICE, DTLS, timeout, …).",
            labels=("reason",),
        )
        merged: dict[str, int] = dict.fromkeys(KNOWN_FAILURE_REASONS, 0)
        for reason, count in stats.connection_failures.items():
            label = _clean_reason(reason)
            merged[label] = merged.get(label, 0) + count
        for label, count in sorted(merged.items()):
            failures.add_metric((label,), count)
        yield failures
        yield HistogramMetricFamily(
            f"{PREFIX}_connection_setup_seconds",
            "Time from a participant joining to the first media the relay received from it.",
            buckets=_histogram_buckets(stats.setup_time),
            sum_value=stats.setup_time.total,
        )
        yield HistogramMetricFamily(
            f"{PREFIX}_forwarding_delay_seconds",
            "Packet arrival at the relay to hand-off to a subscriber's transport.",
            buckets=_histogram_buckets(stats.forwarding_delay),
            sum_value=stats.forwarding_delay.total,
        )

    def _per_call(self, calls: dict[str, _CallRows], admitted: list[str]) -> Iterator[Metric]:
        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_stream_{name}", doc, labels=STREAM_LABELS)

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_stream_{name}", doc, labels=STREAM_LABELS)

        participants = GaugeMetricFamily(
            f"{PREFIX}_call_participants",
            "Participants of the call that have media streams on the relay.",
            labels=("call",),
        )
        info = GaugeMetricFamily(
            f"{PREFIX}_stream_info",
            "Always 1; carries the stream's codec.",
            labels=(*STREAM_LABELS, "codec"),
        )
        age = gauge("age_seconds", "Seconds since the relay created this stream.")
        c_bytes = counter("bytes", "RTP bytes (header + payload, before SRTP) of the stream.")
        c_packets = counter("packets", "RTP packets of the stream.")
        c_lost = counter(
            "packets_lost",
            "Packets lost: in = gaps the relay saw from the publisher; "
            "out = cumulative loss reported by the subscriber's receiver reports.",
        )
        g_loss = gauge("loss_ratio", "Fraction of packets lost in the last report interval (0..1).")
        g_jitter = gauge("jitter_seconds", "Interarrival jitter (RFC 3550).")
        g_rtt = gauge("round_trip_time_seconds", "Round-trip time from RTCP SR/RR.")
        c_frames = counter("frames", "Complete frames (video) or packets (audio); rate() is fps.")
        g_width = gauge("frame_width_pixels", "Width of the last keyframe (VP8).")
        g_height = gauge("frame_height_pixels", "Height of the last keyframe (VP8).")
        c_nacks = counter("nacks", "Sequence numbers the relay NACKed to the publisher (in).")
        c_rtx = counter(
            "retransmitted_packets", "Packets resent to the subscriber after its NACK (out)."
        )
        c_kfr = counter(
            "keyframe_requests",
            "Keyframe requests: in = PLIs the relay sent the publisher; out = PLI/FIR received "
            "from the subscriber.",
        )
        c_kf = counter("keyframes", "Video keyframes seen (in) or forwarded (out).")
        g_remb = gauge(
            "remb_bytes_per_second",
            "REMB (×8 for bit/s): in = target the relay asked the publisher for; "
            "out = the subscriber's receive estimate.",
        )
        g_estimate = gauge(
            "bandwidth_estimate_bytes_per_second",
            "The relay's own estimate of the publisher's uplink (×8 for bit/s).",
        )
        now = self._clock()
        for call in admitted:
            rows = calls[call]
            participants.add_metric((call,), len(rows.participants))
            for key, row in sorted(rows.streams.items()):
                info.add_metric((*key, row.codec or "unknown"), 1)
                if math.isfinite(row.started_at):
                    age.add_metric(key, max(now - row.started_at, 0.0))
                c_bytes.add_metric(key, row.bytes)
                c_packets.add_metric(key, row.packets)
                c_lost.add_metric(key, row.packets_lost)
                g_loss.add_metric(key, row.fraction_lost)
                g_jitter.add_metric(key, row.jitter_seconds)
                if row.rtt_seconds is not None:
                    g_rtt.add_metric(key, row.rtt_seconds)
                c_frames.add_metric(key, row.frames)
                c_kfr.add_metric(key, row.keyframe_requests)
                if key[4] == "video":
                    c_kf.add_metric(key, row.keyframes)
                    if row.frame_width and row.frame_height:
                        g_width.add_metric(key, row.frame_width)
                        g_height.add_metric(key, row.frame_height)
                if key[5] == "in":
                    c_nacks.add_metric(key, row.nacks)
                else:
                    c_rtx.add_metric(key, row.retransmits)
                if row.remb_bps is not None:
                    g_remb.add_metric(key, row.remb_bps / 8)
                if row.estimate_bps is not None:
                    g_estimate.add_metric(key, row.estimate_bps / 8)
        yield participants
        yield info
        yield age
        yield c_bytes
        yield c_packets
        yield c_lost
        yield g_loss
        yield g_jitter
        yield g_rtt
        yield c_frames
        yield g_width
        yield g_height
        yield c_nacks
        yield c_rtx
        yield c_kfr
        yield c_kf
        yield g_remb
        yield g_estimate
