"""aiortc tracks producing synthetic, machine-checkable media in real time.

* :class:`PatternVideoTrack` -- pattern frames (see :mod:`synth.pattern`),
  pts in 90 kHz units, paced like aiortc's ``VideoStreamTrack``; each frame is
  stamped with ``capture_ms = int(time.time() * 1000)`` at the moment it is
  produced (after the pacing sleep) and ``frame_index`` counting produced frames.
* :class:`ToneAudioTrack` -- tone + wall-clock marks (see :mod:`synth.tone`),
  ``ptime_ms`` frames of packed s16, pts in samples (time_base 1/sample_rate).
  A frame covering wall-clock samples ``[n, n+k)`` is returned at wall time
  ``(n+k)/sample_rate`` (like a microphone), so marks stay aligned with the
  wall clock.

Both tracks support ``pause()`` / ``resume()`` (video: black frames without a
pattern, audio: silence -- pacing continues, like a muted device) and the video
track supports ``freeze()`` / ``unfreeze()`` (repeats the last picture with
fresh timestamps, to provoke freeze detection). If the consumer falls more than
``max_lag_s`` behind, the tracks skip ahead instead of bursting.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from synth.pattern import PatternPainter
from synth.tone import SAMPLE_RATE, ToneGenerator

__all__ = ["VIDEO_CLOCK_RATE", "VIDEO_TIME_BASE", "PatternVideoTrack", "ToneAudioTrack"]

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


class PatternVideoTrack(MediaStreamTrack):
    """Real-time pattern video source.

    Attributes:
        frames_sent: frames returned by ``recv()`` (incl. paused/frozen ones).
        frame_index: index painted into the next pattern frame.
        last_capture_ms: capture_ms of the last painted pattern frame.
    """

    kind = "video"

    def __init__(
        self,
        source_id: int,
        width: int = 320,
        height: int = 240,
        fps: int = 15,
        *,
        max_lag_s: float = 0.5,
        first_frame_index: int = 0,
    ) -> None:
        super().__init__()
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.source_id = source_id
        self.width = width
        self.height = height
        self.fps = fps
        self.max_lag_s = max_lag_s
        self._painter = PatternPainter(width, height, source_id)
        self._black = np.zeros((height * 3 // 2, width), dtype=np.uint8)
        self._black[:height] = 16
        self._black[height:] = 128
        self._start: float | None = None
        self._tick = 0  # frame slots since start
        self.frame_index = first_frame_index
        self.frames_sent = 0
        self.last_capture_ms: int | None = None
        self._last_planes: np.ndarray | None = None
        self._paused = False
        self._frozen = False

    # -- controls ----------------------------------------------------------
    def pause(self) -> None:
        """Send black frames without a pattern (like a camera muted by the app)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def freeze(self) -> None:
        """Repeat the last picture (same frame_index) with new timestamps."""
        self._frozen = True

    def unfreeze(self) -> None:
        self._frozen = False

    @property
    def paused(self) -> bool:
        return self._paused

    # -- MediaStreamTrack --------------------------------------------------
    async def _pace(self) -> int:
        """Sleep until the next frame slot, return its pts (90 kHz)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
            self._tick = 0
        else:
            self._tick += 1
            target = self._start + self._tick / self.fps
            if target > now:
                await asyncio.sleep(target - now)
            elif now - target > self.max_lag_s:
                # skip the missed slots rather than producing a burst
                self._tick = int((now - self._start) * self.fps)
        return self._tick * VIDEO_CLOCK_RATE // self.fps

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._pace()
        if self.readyState != "live":
            raise MediaStreamError
        if self._paused:
            planes = self._black
        elif self._frozen and self._last_planes is not None:
            planes = self._last_planes
        else:
            capture_ms = int(time.time() * 1000)
            planes = self._painter.paint_planes(self.frame_index, capture_ms)
            self.last_capture_ms = capture_ms
            self.frame_index = (self.frame_index + 1) & 0xFFFFFFFF
            self._last_planes = planes
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        self.frames_sent += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """Real-time tone + timing-mark audio source (packed s16).

    Attributes:
        frames_sent: frames returned by ``recv()``.
        generator: the :class:`~synth.tone.ToneGenerator` (tone_hz, marks...).
    """

    kind = "audio"

    def __init__(
        self,
        source_id: int,
        sample_rate: int = SAMPLE_RATE,
        ptime_ms: int = 20,
        *,
        channels: int = 1,
        mark_interval_ms: int = 500,
        max_lag_s: float = 0.2,
    ) -> None:
        super().__init__()
        if (sample_rate * ptime_ms) % 1000:
            raise ValueError("ptime_ms must be a whole number of samples")
        self.source_id = source_id
        self.sample_rate = sample_rate
        self.ptime_ms = ptime_ms
        self.channels = channels
        self.max_lag_s = max_lag_s
        self.samples_per_frame = sample_rate * ptime_ms // 1000
        self.generator = ToneGenerator(
            source_id, sample_rate=sample_rate, channels=channels, mark_interval_ms=mark_interval_ms
        )
        self._time_base = fractions.Fraction(1, sample_rate)
        self._origin: int | None = None  # absolute sample index of pts 0
        self._next: int = 0  # absolute sample index of the next frame's first sample
        self.frames_sent = 0
        self._paused = False

    def pause(self) -> None:
        """Send silence (pacing and timestamps continue)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def origin_sample(self) -> int | None:
        """Absolute (wall-clock) sample index of pts 0; None before the first recv()."""
        return self._origin

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        spf = self.samples_per_frame
        sr = self.sample_rate
        if self._origin is None:
            # first frame: the one that has just been "captured"
            end = self.generator.sample_index(time.time())
            self._origin = end - spf
            self._next = self._origin
        else:
            end = self._next + spf
            wait = end / sr - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif -wait > self.max_lag_s:
                # consumer stalled: drop the missed audio, stay aligned to wall clock
                end = self.generator.sample_index(time.time())
                self._next = end - spf
            if self.readyState != "live":
                raise MediaStreamError
        first = self._next
        self._next = first + spf
        if self._paused:
            data = np.zeros((1, spf * self.channels), dtype=np.int16)
            frame = av.AudioFrame.from_ndarray(
                data, format="s16", layout="mono" if self.channels == 1 else "stereo"
            )
            frame.sample_rate = sr
        else:
            frame = self.generator.render_frame(first, spf)
        frame.pts = first - self._origin
        frame.time_base = self._time_base
        self.frames_sent += 1
        return frame
