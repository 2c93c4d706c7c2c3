"""Per-call quality tracking and the end-of-call summary (one `videocallmetrics` doc per call).

`QualitySampler.observe()` is fed the relay's stream samples once per second (by the task that
`metrics.setup` starts); it keeps O(1) running aggregates per stream, so a two-hour call costs the
same memory as a two-second one. `QualitySampler.finish()` turns them, plus the final counters the
relay hands over in `CallClosed`, into the summary document described in docs/metrics.md.

Definitions (they follow from sampling every ~1 s):

* bitrate — per participant and direction ("in" = what the participant sent the relay, "out" =
  what the relay forwarded to the participant), audio + video RTP bytes. `avgBps` is bytes × 8 over
  the time between that participant's first and last media (to within one sampling interval);
  `minBps` is the lowest rate of any full sampling interval after the first (which is partial)
  while the participant was in the call. The call's figures are the mean of the participants'
  averages and the minimum of their minimums.
* freeze — on a video stream, after its first frame: a run of sampling intervals in which not a
  single complete frame went through, ended by frames flowing again. A run is counted if packets
  kept arriving during it (frames could not be completed: loss, waiting for a keyframe) or if it
  lasted at most `FREEZE_MAX_GAP_SECONDS` (a longer silence with no packets at all is the camera
  being switched off, not a freeze). A run still open when the call ends counts only if packets
  were arriving. With 1 s sampling a stall shorter than one interval (e.g. 300 ms) is not visible;
  the smallest freeze reported is one interval. The call's count is over the "out" streams: what
  the viewers saw.
* loss % — in: packets the relay found missing from a publisher over packets expected; out: loss
  the subscribers reported in RTCP receiver reports over packets the relay sent.
* jitter / RTT — mean and maximum of the per-second samples of every stream that had media.
* audio MOS — ITU-T G.107 E-model, simplified, per audio path publisher → relay → subscriber:
  R = 93.2 − Id − Ie_eff, one-way delay d = (RTT_in + RTT_out)/2 + 2 × (jitter_in + jitter_out)
  (jitter buffer) + 26.5 ms (Opus 20 ms frame + 6.5 ms look-ahead),
  Id = 0.024 d + 0.11 (d − 177.3) H(d − 177.3),
  Ie_eff = Ie + (95 − Ie) × Ppl / (Ppl + Bpl) with end-to-end loss Ppl in percent,
  MOS = 1 + 0.035 R + 7·10⁻⁶ R (R − 60)(100 − R). Opus has no ITU-T G.113 entry: Ie = 0 (Opus at
  WebRTC's default bitrates is at least as good as the G.711 reference on this narrowband scale)
  and Bpl = 20 (between G.729A's 19 and G.711+PLC's 25.1; Opus PLC without in-band FEC) are this
  module's assumptions, kept as the constants below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relay.stats import CallClosed, StreamSample, StreamStats

SUMMARY_VERSION = 1
FREEZE_MAX_GAP_SECONDS = 10.0
# Intervals shorter than this (a late sampling pass, the call's last partial second) do not
# count towards minimum bitrates or freezes.
MIN_INTERVAL_SECONDS = 0.5
# Calls that vanished from the relay without a CallClosed are forgotten after this long.
STALE_CALL_SECONDS = 120.0

# E-model constants (see the module docstring).
R0 = 93.2
OPUS_IE = 0.0
OPUS_BPL = 20.0
OPUS_CODEC_DELAY_MS = 26.5
JITTER_BUFFER_FACTOR = 2.0

StreamId = tuple[str, str, str, str]  # participant, source, kind, direction
GroupId = tuple[str, str]  # participant, direction


# -- E-model ---------------------------------------------------------------------------------


def delay_impairment(one_way_delay_ms: float) -> float:
    """Id of the simplified E-model (Cole & Rosenbluth)."""
    d = max(one_way_delay_ms, 0.0)
    return 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)


def effective_equipment_impairment(
    loss_percent: float, *, ie: float = OPUS_IE, bpl: float = OPUS_BPL
) -> float:
    """Ie_eff for random loss (BurstR = 1)."""
    ppl = min(max(loss_percent, 0.0), 100.0)
    return ie + (95.0 - ie) * ppl / (ppl + bpl)


def r_factor(one_way_delay_ms: float, loss_percent: float) -> float:
    return R0 - delay_impairment(one_way_delay_ms) - effective_equipment_impairment(loss_percent)


def mos_from_r(r: float) -> float:
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


def audio_mos(
    *,
    rtt_seconds: float,
    jitter_seconds: float,
    loss_ratio: float,
) -> tuple[float, float, float]:
    """(MOS, R, one-way delay ms) for an audio path with the given end-to-end figures."""
    delay_ms = (
        rtt_seconds / 2 * 1000 + JITTER_BUFFER_FACTOR * jitter_seconds * 1000 + OPUS_CODEC_DELAY_MS
    )
    r = r_factor(delay_ms, loss_ratio * 100)
    return mos_from_r(r), r, delay_ms


# -- running aggregates ----------------------------------------------------------------------


@dataclass(slots=True)
class _Stat:
    """Mean and maximum of a series of samples, without keeping the series."""

    total: float = 0.0
    count: int = 0
    peak: float = 0.0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1
        self.peak = max(self.peak, value) if self.count > 1 else value

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def as_dict(self, digits: int = 6) -> dict[str, float] | None:
        if not self.count:
            return None
        return {"avg": round(self.total / self.count, digits), "max": round(self.peak, digits)}


@dataclass(slots=True)
class _Counts:
    """A stream's cumulative counters at one instant."""

    packets: int = 0
    bytes: int = 0
    packets_lost: int = 0
    frames: int = 0
    nacks: int = 0
    retransmits: int = 0
    keyframe_requests: int = 0
    keyframes: int = 0

    @classmethod
    def of(cls, s: StreamStats) -> _Counts:
        return cls(
            s.packets,
            s.bytes,
            max(s.packets_lost, 0),
            s.frames,
            s.nacks,
            s.retransmits,
            s.keyframe_requests,
            s.keyframes,
        )

    def minus(self, base: _Counts) -> _Counts:
        return _Counts(
            *(
                max(getattr(self, f) - getattr(base, f), 0)
                for f in (
                    "packets",
                    "bytes",
                    "packets_lost",
                    "frames",
                    "nacks",
                    "retransmits",
                    "keyframe_requests",
                    "keyframes",
                )
            )
        )


@dataclass(slots=True)
class _StreamTrack:
    participant: str
    role: str
    source: str
    kind: str
    direction: str
    codec: str
    created_at: float  # StreamStats.started_at (monotonic)
    last_time: float
    # The relay's counters object. A subscriber's transceiver can be reused for another
    # publisher with the same object; the new stream then counts from `base`.
    stats_ref: StreamStats | None = None
    base: _Counts = field(default_factory=_Counts)
    cur: _Counts = field(default_factory=_Counts)
    frame_width: int = 0
    frame_height: int = 0
    media_start: float | None = None
    media_end: float | None = None  # when its counters last grew
    full_intervals: int = 0
    min_bps: float | None = None
    jitter: _Stat = field(default_factory=_Stat)
    rtt: _Stat = field(default_factory=_Stat)
    # freeze detection (video)
    had_frame: bool = False
    gap_seconds: float = 0.0
    gap_had_packets: bool = False
    freezes: int = 0
    freeze_seconds: float = 0.0
    min_fps: float | None = None

    @property
    def totals(self) -> _Counts:
        return self.cur.minus(self.base)

    def update(
        self, sample: StreamSample, now: float, *, final: bool = False, interval: float = 1.0
    ) -> tuple[int, bool]:
        """Take the stream's cumulative counters at `now`; returns (bytes delta, media was
        already flowing before this interval).

        `final` marks the counters the relay kept when the stream ended (participant left or
        call closed): they may date from up to one sampling `interval` after the last pass.
        """
        s = sample.stats
        counts = _Counts.of(s)
        dt = now - self.last_time
        d_bytes = max(counts.bytes - self.cur.bytes, 0)
        d_packets = max(counts.packets - self.cur.packets, 0)
        d_frames = max(counts.frames - self.cur.frames, 0)
        was_flowing = self.media_start is not None
        if self.media_start is None and d_packets > 0:
            # Media started within this interval; it cannot predate the stream itself.
            self.media_start = max(self.last_time, self.created_at)
        if d_bytes > 0:
            self.media_end = min(now, self.last_time + interval) if final else now
        full = was_flowing and not final and dt >= MIN_INTERVAL_SECONDS
        if full:
            self.full_intervals += 1
            bps = d_bytes * 8 / dt
            self.min_bps = bps if self.min_bps is None else min(self.min_bps, bps)
            if self.kind == "video":
                fps = d_frames / dt
                self.min_fps = fps if self.min_fps is None else min(self.min_fps, fps)
                self._freeze_step(dt, d_frames, d_packets)
        elif self.kind == "video" and not self.had_frame and d_frames > 0:
            self.had_frame = True
        if self.media_start is not None and not final:
            self.jitter.add(max(s.jitter_seconds, 0.0))
            if s.rtt_seconds is not None:
                self.rtt.add(max(s.rtt_seconds, 0.0))
        self.codec = self.codec or s.codec
        self.cur = counts
        if s.frame_width and s.frame_height:
            self.frame_width, self.frame_height = s.frame_width, s.frame_height
        self.last_time = now
        return d_bytes, was_flowing

    def _freeze_step(self, dt: float, d_frames: int, d_packets: int) -> None:
        if not self.had_frame:
            self.had_frame = d_frames > 0
            return
        if d_frames > 0:
            if self.gap_seconds > 0 and (
                self.gap_had_packets or self.gap_seconds <= FREEZE_MAX_GAP_SECONDS
            ):
                self.freezes += 1
                self.freeze_seconds += self.gap_seconds
            self.gap_seconds, self.gap_had_packets = 0.0, False
        else:
            self.gap_seconds += dt
            self.gap_had_packets = self.gap_had_packets or d_packets > 0

    def close_freezes(self) -> None:
        if self.gap_seconds > 0 and self.gap_had_packets:
            self.freezes += 1
            self.freeze_seconds += self.gap_seconds
        self.gap_seconds, self.gap_had_packets = 0.0, False

    @property
    def media_seconds(self) -> float:
        if self.media_start is None or self.media_end is None:
            return 0.0
        return max(self.media_end - self.media_start, 0.0)

    def avg_bps(self) -> float | None:
        span = self.media_seconds
        return self.totals.bytes * 8 / span if span > 0 else None

    @property
    def loss_ratio(self) -> float:
        """in: lost / expected; out: reported lost / sent."""
        t = self.totals
        if self.direction == "in":
            expected = t.packets + t.packets_lost
            return t.packets_lost / expected if expected else 0.0
        return min(t.packets_lost / t.packets, 1.0) if t.packets else 0.0


@dataclass(slots=True)
class _GroupTrack:
    """One participant's traffic in one direction (all their streams of that direction)."""

    min_bps: float | None = None


@dataclass(slots=True)
class _CallTrack:
    call: str
    first_seen: float
    last_seen: float
    wall_first_seen: float
    streams: dict[StreamId, _StreamTrack] = field(default_factory=dict)
    groups: dict[GroupId, _GroupTrack] = field(default_factory=dict)
    passes: int = 0

    def update(
        self,
        samples: Iterable[StreamSample],
        now: float,
        *,
        final: bool = False,
        interval: float = 1.0,
    ) -> None:
        deltas: dict[GroupId, tuple[int, bool]] = {}
        for sample in samples:
            s = sample.stats
            sid = (sample.participant, sample.source, s.kind, s.direction)
            track = self.streams.get(sid)
            if track is None:
                track = self.streams[sid] = self._new_track(sample, now)
            d_bytes, was_flowing = track.update(sample, now, final=final, interval=interval)
            gid = (sample.participant, s.direction)
            total, flowing = deltas.get(gid, (0, False))
            deltas[gid] = (total + d_bytes, flowing or was_flowing)
            if gid not in self.groups:
                self.groups[gid] = _GroupTrack()
        if not final:
            dt = now - self.last_seen if self.passes else 0.0
            if dt >= MIN_INTERVAL_SECONDS:
                for gid, (d_bytes, flowing) in deltas.items():
                    if flowing:
                        group = self.groups[gid]
                        bps = d_bytes * 8 / dt
                        group.min_bps = bps if group.min_bps is None else min(group.min_bps, bps)
            self.passes += 1
        self.last_seen = now

    def _new_track(self, sample: StreamSample, now: float) -> _StreamTrack:
        s = sample.stats
        track = _StreamTrack(
            participant=sample.participant,
            role=sample.role,
            source=sample.source,
            kind=s.kind,
            direction=s.direction,
            codec=s.codec,
            created_at=s.started_at,
            # A stream first seen now accumulated its counters since its creation.
            last_time=min(s.started_at, now),
            stats_ref=s,
        )
        for other in self.streams.values():
            if other.stats_ref is s:
                # Same counters object under a new source (a reused transceiver, or idle now):
                # the new stream starts where the previous one stopped.
                track.base = track.cur = other.cur
                track.last_time = other.last_time
                track.codec = ""
                other.stats_ref = None
                break
        return track


# -- the sampler -----------------------------------------------------------------------------


class QualitySampler:
    """Running per-call quality aggregates, fed once per sampling pass."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._calls: dict[str, _CallTrack] = {}
        # Calls summarised at shutdown: the relay's own CallClosed for them comes later and
        # must not produce a second summary.
        self._interrupted: set[str] = set()

    @property
    def calls(self) -> list[str]:
        return list(self._calls)

    def observe(
        self,
        samples: Iterable[StreamSample],
        now: float,
        wall: float,
        opened_at: Callable[[str], float | None] | None = None,
    ) -> None:
        """One sampling pass over every stream the relay holds (`relay.stream_samples()`).

        `opened_at(call)`: when the relay opened the call (`Relay.call_opened_at`), so that a
        checkpoint's `startedAt`, and so its storage key, is the final summary's."""
        by_call: dict[str, list[StreamSample]] = {}
        for sample in samples:
            by_call.setdefault(sample.call, []).append(sample)
        for call, call_samples in by_call.items():
            track = self._calls.get(call)
            if track is None:
                first = min(s.stats.started_at for s in call_samples)
                opened = opened_at(call) if opened_at is not None else None
                track = self._calls[call] = _CallTrack(
                    call=call,
                    first_seen=first,
                    last_seen=first,
                    wall_first_seen=wall - max(now - first, 0.0) if opened is None else opened,
                )
            track.update(call_samples, now)
        for call in [c for c, t in self._calls.items() if now - t.last_seen > STALE_CALL_SECONDS]:
            del self._calls[call]

    def finish(self, closed: CallClosed, now: float) -> dict[str, Any] | None:
        """The summary document of a call the relay has torn down (None if it was already
        summarised by `finish_interrupted`)."""
        if closed.call in self._interrupted:
            return None
        track = self._calls.pop(closed.call, None)
        if track is None:
            first = min((s.stats.started_at for s in closed.samples), default=now)
            track = _CallTrack(
                call=closed.call,
                first_seen=first,
                last_seen=first,
                wall_first_seen=closed.opened_at_wall,
            )
        track.update(closed.samples, now, final=True, interval=self.interval)
        return build_summary(
            track,
            opened_at_wall=closed.opened_at_wall,
            closed_at_wall=closed.closed_at_wall,
            participants=closed.participants,
            setup_times=closed.setup_times,
            end_reason="closed",
        )

    def snapshot(self, wall: float) -> list[dict[str, Any]]:
        """The summary of every open call so far (`endedAt` is `wall`, `endReason` and
        `completed` null), from the sampling passes up to now; nothing is finished or changed."""
        return [
            build_summary(
                track,
                opened_at_wall=track.wall_first_seen,
                closed_at_wall=wall,
                participants=len({p for p, _ in track.groups}),
                setup_times=(),
                end_reason=None,
            )
            for track in self._calls.values()
        ]

    def finish_interrupted(self, call: str, now: float, wall: float) -> dict[str, Any] | None:
        """Summary of a call still open when the service stops (no CallClosed will be handled)."""
        track = self._calls.pop(call, None)
        if track is None:
            return None
        self._interrupted.add(call)
        return build_summary(
            track,
            opened_at_wall=track.wall_first_seen,
            closed_at_wall=wall,
            participants=len({p for p, _ in track.groups}),
            setup_times=(),
            end_reason="shutdown",
        )


# -- the summary document --------------------------------------------------------------------


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _wall(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def build_summary(
    track: _CallTrack,
    *,
    opened_at_wall: float,
    closed_at_wall: float,
    participants: int,
    setup_times: tuple[float, ...],
    end_reason: str | None,
) -> dict[str, Any]:
    """The summary document; `end_reason` None builds a checkpoint of a call still running
    (freezes still open are not counted yet, the call's state is left as it is)."""
    streams = list(track.streams.values())
    totals = {id(st): st.totals for st in streams}
    if end_reason is not None:
        for stream in streams:
            stream.close_freezes()

    bitrate: dict[str, dict[str, float | None]] = {}
    for direction in ("in", "out"):
        avgs: list[float] = []
        mins: list[float] = []
        for (participant, d), group in track.groups.items():
            if d != direction:
                continue
            mine = [st for st in streams if st.participant == participant and st.direction == d]
            starts = [st.media_start for st in mine if st.media_start is not None]
            ends = [st.media_end for st in mine if st.media_end is not None]
            span = max(ends) - min(starts) if starts and ends else 0.0
            if span > 0:
                avgs.append(sum(totals[id(st)].bytes for st in mine) * 8 / span)
            if group.min_bps is not None:
                mins.append(group.min_bps)
        bitrate[direction] = {
            "avgBps": _round(sum(avgs) / len(avgs), 1) if avgs else None,
            "minBps": _round(min(mins), 1) if mins else None,
        }

    loss: dict[str, float | None] = {}
    jitter: dict[str, dict[str, float] | None] = {}
    for direction in ("in", "out"):
        chosen = [st for st in streams if st.direction == direction]
        lost = sum(totals[id(st)].packets_lost for st in chosen)
        packets = sum(totals[id(st)].packets for st in chosen)
        if direction == "in":
            expected = packets + lost
            loss[direction] = _round(lost / expected * 100, 3) if expected else None
        else:
            loss[direction] = _round(min(lost / packets, 1.0) * 100, 3) if packets else None
        jitter[direction] = _merge_stats(st.jitter for st in chosen).as_dict()

    rtt = _merge_stats(st.rtt for st in streams)

    viewers = [st for st in streams if st.kind == "video" and st.direction == "out"]
    freezes = {
        "count": sum(st.freezes for st in viewers),
        "totalSeconds": _round(sum(st.freeze_seconds for st in viewers), 3),
    }

    paths = _audio_paths(streams)
    mos_values = [p["mos"] for p in paths]

    duration = max(closed_at_wall - opened_at_wall, 0.0)
    # The relay hands over setup times at a close; otherwise count the publishers with media.
    got_media = (
        len(setup_times)
        if end_reason == "closed"
        else len(
            {
                st.participant
                for st in streams
                if st.direction == "in" and st.media_start is not None
            }
        )
    )
    return {
        "version": SUMMARY_VERSION,
        "roomId": track.call,
        "startedAt": _wall(opened_at_wall),
        "endedAt": _wall(closed_at_wall),
        "durationSeconds": round(duration, 3),
        "endReason": end_reason,
        "participants": participants,
        "participantsWithMedia": got_media,
        "completed": got_media >= 2 if end_reason == "closed" else None,
        "setupTimeSeconds": (
            {
                "avg": round(sum(setup_times) / got_media, 3),
                "max": round(max(setup_times), 3),
                "total": round(sum(setup_times), 3),
                "count": got_media,
            }
            if setup_times
            else None
        ),
        "bitrate": bitrate,
        "packetLossPercent": loss,
        "jitterSeconds": jitter,
        "rttSeconds": rtt.as_dict(),
        "freezes": freezes,
        "audioMos": (
            {
                "avg": round(sum(mos_values) / len(mos_values), 2),
                "min": round(min(mos_values), 2),
                "paths": paths,
            }
            if paths
            else None
        ),
        "samplingIntervals": track.passes,
        "streams": [_stream_doc(st) for st in streams if st.media_start is not None],
    }


def _merge_stats(stats: Iterable[_Stat]) -> _Stat:
    merged = _Stat()
    for st in stats:
        if st.count:
            merged.peak = max(merged.peak, st.peak) if merged.count else st.peak
            merged.total += st.total
            merged.count += st.count
    return merged


def _stream_doc(st: _StreamTrack) -> dict[str, Any]:
    t = st.totals
    span = st.media_seconds
    doc: dict[str, Any] = {
        "participant": st.participant,
        "role": st.role,
        "source": st.source,
        "kind": st.kind,
        "direction": st.direction,
        "codec": st.codec,
        "mediaSeconds": round(span, 3),
        "packets": t.packets,
        "bytes": t.bytes,
        "packetsLost": t.packets_lost,
        "lossPercent": round(st.loss_ratio * 100, 3),
        "avgBps": _round(st.avg_bps(), 1),
        "minBps": _round(st.min_bps, 1),
        "jitterSeconds": st.jitter.as_dict(),
        "rttSeconds": st.rtt.as_dict(),
        "nacks": t.nacks,
        "retransmits": t.retransmits,
        "keyframeRequests": t.keyframe_requests,
    }
    if st.kind == "video":
        doc.update(
            frames=t.frames,
            avgFps=_round(t.frames / span, 2) if span > 0 else None,
            minFps=_round(st.min_fps, 2),
            keyframes=t.keyframes,
            frameWidth=st.frame_width or None,
            frameHeight=st.frame_height or None,
            freezes=st.freezes,
            freezeSeconds=_round(st.freeze_seconds, 3),
        )
    return doc


def _audio_paths(streams: list[_StreamTrack]) -> list[dict[str, Any]]:
    """E-model MOS per audio path publisher → relay → subscriber."""
    inbound = {st.participant: st for st in streams if st.kind == "audio" and st.direction == "in"}
    paths: list[dict[str, Any]] = []
    for out in streams:
        if out.kind != "audio" or out.direction != "out" or out.totals.packets == 0:
            continue
        src = inbound.get(out.source)
        if src is None or src.totals.packets == 0:
            continue
        loss = 1 - (1 - src.loss_ratio) * (1 - out.loss_ratio)
        rtt_in = src.rtt.mean or 0.0
        rtt_out = out.rtt.mean or 0.0
        jitter_total = (src.jitter.mean or 0.0) + (out.jitter.mean or 0.0)
        mos, r, delay_ms = audio_mos(
            rtt_seconds=rtt_in + rtt_out, jitter_seconds=jitter_total, loss_ratio=loss
        )
        paths.append(
            {
                "from": out.source,
                "to": out.participant,
                "lossPercent": round(loss * 100, 3),
                "oneWayDelayMs": round(delay_ms, 1),
                "rFactor": round(r, 2),
                "mos": round(mos, 2),
            }
        )
    return paths
