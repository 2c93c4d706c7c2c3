"""Probes consuming received aiortc tracks and checking synthetic media.

Usage::

    probe = VideoProbe()
    probe.start(remote_video_track)        # needs a running event loop
    await probe.wait_for_frames(30, timeout=10, intact=True)
    assert probe.source_ids_seen == {3}
    print(probe.fps(), probe.latency_stats())
    await probe.stop()

Frames can also be fed directly (unit tests, custom loops) with
``probe.feed(frame, arrival=time.time())``. All times are wall-clock seconds
since the epoch (``time.time()``) unless the name ends in ``_ms``.

Latency (video) is ``arrival_ms - capture_ms`` and therefore includes any
clock offset between sender and receiver (same host in tests: none).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from synth.pattern import PatternInfo, read_pattern
from synth.tone import MarkDetector, MarkEvent

__all__ = ["AudioProbe", "FrameRecord", "Freeze", "VideoProbe", "percentile"]

FREEZE_THRESHOLD_MS = 200.0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) or None for an empty list."""
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))
    return s[k]


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One received video frame: arrival time (s), decoded pattern (or None), size."""

    arrival: float
    info: PatternInfo | None
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Freeze:
    """A gap between two consecutive *new* pattern frames longer than the threshold.

    ``start`` is the arrival time (s) of the last new frame before the gap,
    ``duration_ms`` the gap, ``frame_index`` the index shown during the gap.
    """

    start: float
    duration_ms: float
    frame_index: int


class _ProbeBase:
    kind = "media"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.ended = False
        self.error: BaseException | None = None
        self.track: MediaStreamTrack | None = None

    # -- task management -------------------------------------------------
    def start(self, track: MediaStreamTrack) -> None:
        """Consume ``track`` in a background task until it ends or :meth:`stop`."""
        if self._task is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self.track = track
        self._task = asyncio.get_running_loop().create_task(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                self._feed_any(frame, time.time())
        except MediaStreamError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the error for wait_for's message
            self.error = exc
        finally:
            self.ended = True
            self._notify()

    async def stop(self) -> None:
        """Cancel the consuming task (the track itself is not stopped)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _feed_any(self, frame: Any, arrival: float) -> None:
        raise NotImplementedError

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- waiting -----------------------------------------------------------
    def summary(self) -> str:
        raise NotImplementedError

    async def wait_for(
        self,
        predicate: Callable[[Self], bool],
        timeout: float,  # noqa: ASYNC109
        what: str = "condition",
    ) -> Self:
        """Wait until ``predicate(probe)`` is true (re-checked on every frame).

        Raises :class:`TimeoutError` with the probe state after ``timeout``
        seconds, or as soon as the track has ended with the predicate false.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if predicate(self):
                return self
            if self.ended:
                reason = f"error {self.error!r}" if self.error else "track ended"
                raise TimeoutError(
                    f"{type(self).__name__}: {reason} while waiting for {what}; {self.summary()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"{type(self).__name__}: timed out after {timeout:.1f}s "
                    f"waiting for {what}; {self.summary()}"
                )
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)


class VideoProbe(_ProbeBase):
    """Checks received pattern video.

    Attributes (all updated per frame):
        frames_received: every frame received.
        frames_decoded: frames where a pattern code was read (CRC ok).
        frames_intact: decoded frames whose picture was clean (PatternInfo.intact).
        new_frames: decoded frames with a frame_index different from the previous one.
        last_info: last decoded PatternInfo (None until one is read).
        source_ids_seen: set of pattern source ids read.
        latencies_ms: arrival_ms - capture_ms for each new pattern frame (bounded deque).
        freezes: list of :class:`Freeze` (gap between new frames > freeze_threshold_ms).
        first_frame_at / first_pattern_at / last_frame_at: wall-clock seconds or None.
        records: recent :class:`FrameRecord` (bounded deque).
        last_frame: the last received frame itself (the picture of a source that paints no
            pattern, e.g. a browser's camera).
        resolutions_seen: set of (width, height).
    """

    kind = "video"

    def __init__(
        self,
        *,
        freeze_threshold_ms: float = FREEZE_THRESHOLD_MS,
        expected_source_id: int | None = None,
        use_capture_ms: bool = True,
        max_history: int = 100_000,
    ) -> None:
        super().__init__()
        self.freeze_threshold_ms = freeze_threshold_ms
        self.expected_source_id = expected_source_id
        self.use_capture_ms = use_capture_ms
        self.frames_received = 0
        self.frames_decoded = 0
        self.frames_intact = 0
        self.new_frames = 0
        self.last_info: PatternInfo | None = None
        self.source_ids_seen: set[int] = set()
        self.resolutions_seen: set[tuple[int, int]] = set()
        self.latencies_ms: deque[float] = deque(maxlen=max_history)
        self.freezes: list[Freeze] = []
        self.records: deque[FrameRecord] = deque(maxlen=max_history)
        self.first_frame_at: float | None = None
        self.first_pattern_at: float | None = None
        self.last_frame_at: float | None = None
        self._new_arrivals: deque[float] = deque(maxlen=max_history)
        self._last_new_at: float | None = None
        self._last_index: int | None = None
        self.frames_wrong_source = 0
        self.last_frame: av.VideoFrame | None = None

    def _feed_any(self, frame: Any, arrival: float) -> None:
        self.feed(frame, arrival)

    def feed(self, frame: av.VideoFrame, arrival: float | None = None) -> PatternInfo | None:
        """Record one received frame (``arrival`` defaults to ``time.time()``)."""
        if arrival is None:
            arrival = time.time()
        info = read_pattern(frame)
        self.last_frame = frame  # a source without a pattern (a browser camera) is told by it
        self.record(info, arrival, frame.width, frame.height)
        return info

    def record(
        self, info: PatternInfo | None, arrival: float, width: int = 0, height: int = 0
    ) -> None:
        """Record an already-decoded frame (for callers that ran read_pattern themselves)."""
        self.frames_received += 1
        if self.first_frame_at is None:
            self.first_frame_at = arrival
        self.last_frame_at = arrival
        self.records.append(FrameRecord(arrival, info, width, height))
        self.resolutions_seen.add((width, height))
        if info is not None:
            self.frames_decoded += 1
            self.frames_intact += info.intact
            self.source_ids_seen.add(info.source_id)
            if self.expected_source_id is not None and info.source_id != self.expected_source_id:
                self.frames_wrong_source += 1
            if self.first_pattern_at is None:
                self.first_pattern_at = arrival
            self.last_info = info
            if info.frame_index != self._last_index:
                self.new_frames += 1
                if self._last_new_at is not None and self._last_index is not None:
                    gap_ms = (arrival - self._last_new_at) * 1000.0
                    if gap_ms > self.freeze_threshold_ms:
                        self.freezes.append(Freeze(self._last_new_at, gap_ms, self._last_index))
                self._last_new_at = arrival
                self._last_index = info.frame_index
                self._new_arrivals.append(arrival)
                if self.use_capture_ms:
                    self.latencies_ms.append(arrival * 1000.0 - info.capture_ms)
        self._notify()

    # -- derived metrics ---------------------------------------------------
    def fps(self, window_s: float = 2.0, now: float | None = None) -> float:
        """Rate of *new* pattern frames over the last ``window_s`` seconds (before ``now``)."""
        if now is None:
            now = self.last_frame_at if self.last_frame_at is not None else time.time()
        lo = now - window_s
        count = 0
        for t in reversed(self._new_arrivals):
            if t <= lo:
                break
            if t <= now:
                count += 1
        return count / window_s

    def current_freeze_ms(self, now: float | None = None) -> float:
        """Time since the last new pattern frame (ms), 0 if none yet."""
        if self._last_new_at is None:
            return 0.0
        return ((time.time() if now is None else now) - self._last_new_at) * 1000.0

    def latency_stats(self) -> dict[str, float | None]:
        """min / p50 / p95 / max of latencies_ms (None when empty)."""
        values = list(self.latencies_ms)
        return {
            "min": min(values) if values else None,
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "max": max(values) if values else None,
        }

    def summary(self) -> str:
        return (
            f"frames_received={self.frames_received} decoded={self.frames_decoded} "
            f"intact={self.frames_intact} new={self.new_frames} "
            f"sources={sorted(self.source_ids_seen)} "
            f"resolutions={sorted(self.resolutions_seen)} last_info={self.last_info} "
            f"freezes={len(self.freezes)} ended={self.ended}"
        )

    # -- convenience waits -------------------------------------------------
    async def wait_for_frames(
        self,
        n: int,
        timeout: float = 10.0,  # noqa: ASYNC109
        *,
        intact: bool = False,
    ) -> VideoProbe:
        """Wait until ``n`` frames (decoded and intact ones if ``intact``) arrived in total."""
        if intact:
            return await self.wait_for(
                lambda p: p.frames_intact >= n, timeout, f"{n} intact pattern frames"
            )
        return await self.wait_for(lambda p: p.frames_received >= n, timeout, f"{n} frames")

    async def wait_for_more_frames(
        self,
        n: int,
        timeout: float = 10.0,  # noqa: ASYNC109
        *,
        intact: bool = True,
    ) -> VideoProbe:
        """Wait for ``n`` more (intact) frames than have been seen so far."""
        base = self.frames_intact if intact else self.frames_received
        return await self.wait_for_frames(base + n, timeout, intact=intact)

    async def wait_for_source(
        self,
        source_id: int,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> VideoProbe:
        """Wait until the latest decoded frame comes from ``source_id``."""
        return await self.wait_for(
            lambda p: p.last_info is not None and p.last_info.source_id == source_id,
            timeout,
            f"a frame from source {source_id}",
        )


class AudioProbe(_ProbeBase):
    """Checks received tone/mark audio.

    Attributes:
        frames_received, samples_received: counters.
        first_audio_at / last_audio_at: arrival wall-clock seconds or None.
        marks: detected :class:`~synth.tone.MarkEvent` (deque).
        sample_rates_seen, channels_seen: sets.
    Properties: ``mark_latencies_ms``, ``tone_present``, ``tone_amplitude``.
    """

    kind = "audio"

    def __init__(
        self,
        *,
        source_id: int | None = None,
        mark_interval_ms: int = 500,
        sample_rate: int = 48000,
        max_history: int = 100_000,
    ) -> None:
        super().__init__()
        self.detector = MarkDetector(
            source_id=source_id,
            mark_interval_ms=mark_interval_ms,
            sample_rate=sample_rate,
            max_history=max_history,
        )
        self.frames_received = 0
        self.samples_received = 0
        self.first_audio_at: float | None = None
        self.last_audio_at: float | None = None
        self.sample_rates_seen: set[int] = set()
        self.channels_seen: set[int] = set()

    def _feed_any(self, frame: Any, arrival: float) -> None:
        self.feed(frame, arrival)

    def feed(self, frame: av.AudioFrame, arrival: float | None = None) -> list[MarkEvent]:
        """Record one received audio frame (``arrival`` defaults to ``time.time()``)."""
        if arrival is None:
            arrival = time.time()
        self.frames_received += 1
        self.samples_received += frame.samples
        if self.first_audio_at is None:
            self.first_audio_at = arrival
        self.last_audio_at = arrival
        self.sample_rates_seen.add(frame.sample_rate)
        self.channels_seen.add(len(frame.layout.channels))
        events = self.detector.feed(frame, arrival)
        self._notify()
        return events

    @property
    def marks(self) -> deque[MarkEvent]:
        return self.detector.marks

    @property
    def mark_latencies_ms(self) -> list[float]:
        return self.detector.latencies_ms

    @property
    def tone_present(self) -> bool:
        return self.detector.tone_present

    @property
    def tone_amplitude(self) -> float:
        return self.detector.tone_amplitude

    @property
    def heard_source_slot(self) -> int | None:
        """``source_id % 40`` of the loudest source tone (useful with ``source_id=None``)."""
        return self.detector.heard_source_slot

    @property
    def heard_slots(self) -> Counter[int]:
        """100 ms windows in which each source slot (``source_id % 40``) was the tone heard."""
        return self.detector.heard_slots

    def latency_stats(self) -> dict[str, float | None]:
        values = self.mark_latencies_ms
        return {
            "min": min(values) if values else None,
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "max": max(values) if values else None,
        }

    def summary(self) -> str:
        return (
            f"frames_received={self.frames_received} samples={self.samples_received} "
            f"marks={len(self.marks)} "
            f"last_latencies_ms={[round(x, 1) for x in self.mark_latencies_ms[-3:]]} "
            f"tone_present={self.tone_present} tone_amplitude={self.tone_amplitude:.3f} "
            f"rates={sorted(self.sample_rates_seen)} ended={self.ended}"
        )

    async def wait_for_frames(self, n: int, timeout: float = 10.0) -> AudioProbe:  # noqa: ASYNC109
        return await self.wait_for(lambda p: p.frames_received >= n, timeout, f"{n} audio frames")

    async def wait_for_marks(self, n: int, timeout: float = 10.0) -> AudioProbe:  # noqa: ASYNC109
        return await self.wait_for(lambda p: len(p.marks) >= n, timeout, f"{n} timing marks")

    async def wait_for_tone(self, timeout: float = 10.0) -> AudioProbe:  # noqa: ASYNC109
        return await self.wait_for(lambda p: p.tone_present, timeout, "the source tone")
