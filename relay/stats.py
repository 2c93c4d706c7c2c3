"""Counters the relay keeps about itself, for whoever wants to read them (metrics, QA, tests).

The relay only counts; it never formats, exports or stores. Everything here is plain data updated on
the media path with integer additions, so reading it costs the forwarding nothing.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

# Upper bounds (seconds) of the forwarding-delay histogram: packet arrival at the relay's socket
# reader to hand-off of the rewritten packet to the subscriber's transport.
FORWARDING_DELAY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)
# Upper bounds (seconds) of the join → first media histogram.
SETUP_TIME_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class ConnectionFailure(StrEnum):
    """Why a media connection failed: the keys of `RelayStats.connection_failures`."""

    ICE = "ice"
    DTLS = "dtls"
    TIMEOUT = "timeout"  # no RTCP for `silence_timeout` although ICE still looked alive


@dataclass(slots=True)
class Histogram:
    """A cumulative-bucket histogram in the Prometheus sense, kept without Prometheus."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # one per bound, plus +Inf last
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, the last bound being +Inf."""
        running = 0
        out: list[tuple[float, int]] = []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(slots=True)
class StreamStats:
    """One RTP stream at the relay in one direction.

    direction "in": publisher → relay (one per published track).
    direction "out": relay → one subscriber (one per forwarded track and subscriber).
    """

    kind: str  # "audio" | "video"
    direction: str  # "in" | "out"
    codec: str = ""  # "VP8", "H264", "opus"
    packets: int = 0
    bytes: int = 0  # RTP bytes (header + payload), before SRTP
    packets_lost: int = 0  # in: gaps seen by the relay; out: as reported by the subscriber's RR
    fraction_lost: float = 0.0  # last interval, 0..1 (in: relay's own; out: subscriber's RR)
    jitter_seconds: float = 0.0  # in: relay's RFC 3550 estimate; out: subscriber's RR
    rtt_seconds: float | None = None  # from RR/SR (out) or from the publisher's RR of our RTCP (in)
    nacks: int = 0  # in: sequence numbers the relay asked the publisher to resend
    retransmits: int = 0  # out: packets resent to the subscriber after its NACK
    retransmit_bytes: int = 0  # out: their bytes (they share the subscriber's link)
    keyframe_requests: int = 0  # in: PLIs sent to the publisher; out: PLI/FIR from the subscriber
    keyframes: int = 0  # video keyframes seen (in) or forwarded (out)
    frames: int = 0  # complete frames (video marker bits / audio packets)
    frame_width: int = 0  # last keyframe's size (VP8; 0 when unknown)
    frame_height: int = 0
    remb_bps: int | None = None  # in: REMB the relay sent the publisher; out: subscriber's REMB
    estimate_bps: int | None = None  # in: relay's own estimate of the publisher's uplink
    # out, video: the relay's loss-based limit for this leg (Forwarder: GCC's sender side)
    loss_limit_bps: int | None = None
    started_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class RelayStats:
    """Relay-wide counters (not tied to one call)."""

    forwarding_delay: Histogram = field(default_factory=lambda: Histogram(FORWARDING_DELAY_BUCKETS))
    setup_time: Histogram = field(default_factory=lambda: Histogram(SETUP_TIME_BUCKETS))
    connection_failures: Counter[str] = field(default_factory=Counter)  # reason → count
    rooms_opened: int = 0
    rooms_closed: int = 0
    participants_joined: int = 0
    participants_left: int = 0
    # exceptions raised while handling a received packet that decrypted fine (bugs, not bad
    # packets: those are dropped uncounted); the first few are logged with their traceback
    media_path_errors: int = 0


@dataclass(frozen=True, slots=True)
class StreamSample:
    """A stream's counters with the labels that place it: what `Relay.stream_samples()` yields.

    Labels carry no personal data: a call is its room id, a participant its connection id.
    """

    call: str  # room id
    participant: str  # socket id of the participant this stream belongs to
    role: str  # "client" | "psychologist" | "admin"
    source: str  # "out": socket id of the publisher forwarded; "in": same as participant
    stats: StreamStats


@dataclass(frozen=True, slots=True)
class CallClosed:
    """Handed to `Relay.on_call_closed` listeners when a room is torn down."""

    call: str
    opened_at_wall: float  # time.time() when the first participant joined
    closed_at_wall: float
    participants: int  # distinct people (user ids) that ever joined: a reconnect is not one more
    setup_times: tuple[float, ...]  # join → first media, seconds, per person that got media
    samples: tuple[StreamSample, ...]  # final counters of every stream the call had
