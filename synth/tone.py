"""Audio with wall-clock timing marks, and a detector for them.

Signal (48 kHz by default, s16, mono or stereo with identical channels):

* a continuous low-level tone (amplitude ``TONE_AMPLITUDE`` = 0.06 FS, about
  -24 dBFS) at a source-specific frequency :func:`tone_hz_for_source`
  (300 + 20 * (source_id % 40) Hz, i.e. 300..1080 Hz: ids 40 apart collide);
* a loud "mark" burst (``MARK_AMPLITUDE`` = 0.5 FS, ``MARK_HZ`` = 1800 Hz,
  ``MARK_MS`` = 40 ms, 1 ms raised-cosine ramps) starting exactly at every
  wall-clock multiple of ``mark_interval_ms`` (default 500 ms), i.e. when
  ``unix_time_ms % mark_interval_ms == 0``.

Samples are addressed by their *absolute* index ``n = round(unix_time_s *
sample_rate)``, so any chunk can be rendered independently and consecutive
chunks join seamlessly (phases are computed with exact integer arithmetic).

:class:`MarkDetector` is fed received frames together with their arrival
wall-clock time. The arrival time of a frame is taken to be the arrival time of
the sample just *after* its last sample (a frame becomes available when its
last sample has been captured), so sample ``j`` of an ``n``-sample frame
arriving at ``A`` is dated ``A - (n - j) / sample_rate``. :class:`ToneAudioTrack
<synth.tracks.ToneAudioTrack>` emits each frame at exactly that moment, so a
zero-delay path measures 0 ms. Mark onsets are found per 10 ms block with a
Goertzel filter at ``MARK_HZ`` and refined to ~1 ms with a demodulated
envelope; the latency of an onset is its arrival time minus the mark it
belongs to, taken as the wall-clock mark instant such that the latency lies in
``[-early_tolerance_ms, mark_interval_ms - early_tolerance_ms)`` (default
``[-50, 450)`` ms).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "MARK_AMPLITUDE",
    "MARK_HZ",
    "MARK_MS",
    "SAMPLE_RATE",
    "TONE_AMPLITUDE",
    "MarkDetector",
    "MarkEvent",
    "ToneGenerator",
    "audio_frame_to_mono",
    "tone_hz_for_source",
]

F64 = npt.NDArray[np.float64]
I16 = npt.NDArray[np.int16]

SAMPLE_RATE = 48000
MARK_HZ = 1800
MARK_MS = 40
MARK_AMPLITUDE = 0.5
TONE_AMPLITUDE = 0.06
DEFAULT_MARK_INTERVAL_MS = 500
_RAMP_MS = 1.0


def tone_hz_for_source(source_id: int) -> int:
    """Continuous-tone frequency (Hz) of a source: 300 + 20 * (source_id % 40)."""
    return 300 + 20 * (source_id % 40)


def _sine(freq_hz: int, idx: npt.NDArray[np.int64], sample_rate: int) -> F64:
    # exact phase: (f * n mod sr) / sr cycles, integer arithmetic (no float drift)
    phase: F64 = (2.0 * math.pi / sample_rate) * ((freq_hz * idx) % sample_rate).astype(np.float64)
    return np.sin(phase)


class ToneGenerator:
    """Renders the tone + mark signal for absolute sample indices."""

    def __init__(
        self,
        source_id: int,
        *,
        sample_rate: int = SAMPLE_RATE,
        channels: int = 1,
        mark_interval_ms: int = DEFAULT_MARK_INTERVAL_MS,
        tone_hz: int | None = None,
        tone_amplitude: float = TONE_AMPLITUDE,
        mark_hz: int = MARK_HZ,
        mark_ms: int = MARK_MS,
        mark_amplitude: float = MARK_AMPLITUDE,
    ) -> None:
        if (sample_rate * mark_interval_ms) % 1000:
            raise ValueError("mark_interval_ms must be a whole number of samples")
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        if not 0 < mark_ms < mark_interval_ms / 2:
            raise ValueError("mark_ms must be shorter than half the mark interval")
        self.source_id = source_id
        self.sample_rate = sample_rate
        self.channels = channels
        self.mark_interval_ms = mark_interval_ms
        self.tone_hz = tone_hz_for_source(source_id) if tone_hz is None else tone_hz
        self.tone_amplitude = tone_amplitude
        self.mark_hz = mark_hz
        self.mark_amplitude = mark_amplitude
        self.interval_samples = sample_rate * mark_interval_ms // 1000
        self.mark_samples = sample_rate * mark_ms // 1000
        ramp = max(1, int(sample_rate * _RAMP_MS / 1000))
        env = np.ones(self.mark_samples)
        r = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[:ramp] = r
        env[-ramp:] = r[::-1]
        self._mark = (
            mark_amplitude
            * env
            * _sine(mark_hz, np.arange(self.mark_samples, dtype=np.int64), sample_rate)
        )

    def sample_index(self, unix_time_s: float) -> int:
        """Absolute sample index of a wall-clock time."""
        return round(unix_time_s * self.sample_rate)

    def render_float(self, first_sample: int, count: int) -> F64:
        """Mono float signal (-1..1) for absolute samples ``[first_sample, first_sample+count)``."""
        idx = np.arange(first_sample, first_sample + count, dtype=np.int64)
        out = self.tone_amplitude * _sine(self.tone_hz, idx, self.sample_rate)
        pos = idx % self.interval_samples
        in_mark = pos < self.mark_samples
        if in_mark.any():
            out[in_mark] += self._mark[pos[in_mark]]
        return out

    def render(self, first_sample: int, count: int) -> I16:
        """s16 samples, shape ``(count,)`` for mono or ``(count, 2)`` for stereo."""
        mono = np.clip(
            np.rint(self.render_float(first_sample, count) * 32767.0), -32768, 32767
        ).astype(np.int16)
        if self.channels == 1:
            return mono
        return np.repeat(mono[:, None], 2, axis=1)

    def render_frame(self, first_sample: int, count: int) -> av.AudioFrame:
        """A packed s16 :class:`av.AudioFrame` (pts/time_base unset; sample_rate set)."""
        data = self.render(first_sample, count).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(
            data, format="s16", layout="mono" if self.channels == 1 else "stereo"
        )
        frame.sample_rate = self.sample_rate
        return frame

    def mark_times_ms(self, start_ms: int, end_ms: int) -> list[int]:
        """Wall-clock mark instants (ms) in ``[start_ms, end_ms)``."""
        iv = self.mark_interval_ms
        first = -(-start_ms // iv) * iv
        return list(range(first, end_ms, iv))


def audio_frame_to_mono(frame: av.AudioFrame) -> F64:
    """First channel of an audio frame as float64 in -1..1."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    ch0 = arr[0] if frame.format.is_planar else arr.reshape(-1, channels)[:, 0]
    if ch0.dtype == np.int16:
        return ch0.astype(np.float64) / 32768.0
    if ch0.dtype == np.int32:
        return ch0.astype(np.float64) / 2147483648.0
    if ch0.dtype == np.uint8:
        return (ch0.astype(np.float64) - 128.0) / 128.0
    return ch0.astype(np.float64)


@dataclass(frozen=True, slots=True)
class MarkEvent:
    """A detected mark onset.

    Attributes:
        onset_arrival: wall-clock arrival time of the onset (s since epoch).
        mark_time: wall-clock instant the mark was generated at (s since epoch).
        latency_ms: ``(onset_arrival - mark_time) * 1000``.
        level: mark amplitude estimate (fraction of full scale).
    """

    onset_arrival: float
    mark_time: float
    latency_ms: float
    level: float


def _goertzel_amp(x: F64, cos_v: F64, sin_v: F64) -> float:
    re = float(np.dot(x, cos_v))
    im = float(np.dot(x, sin_v))
    return 2.0 * math.hypot(re, im) / len(x)


class MarkDetector:
    """Streaming detector for timing marks and the source tone.

    Feed it with :meth:`feed` (an :class:`av.AudioFrame` and its arrival
    wall-clock time in seconds) or :meth:`feed_samples`. Results:
    :attr:`marks`, :attr:`latencies_ms`, :attr:`tone_present`,
    :attr:`tone_amplitude` (of the expected tone, or of the strongest source tone
    when no source is given), :attr:`heard_source_slot`, :attr:`heard_slots` (windows per
    slot heard, every window so far). Cost: ~20-30 us per 20 ms frame.
    """

    def __init__(
        self,
        *,
        sample_rate: int = SAMPLE_RATE,
        mark_interval_ms: int = DEFAULT_MARK_INTERVAL_MS,
        mark_hz: int = MARK_HZ,
        source_id: int | None = None,
        tone_hz: int | None = None,
        early_tolerance_ms: float = 50.0,
        on_threshold: float = 0.1,
        off_threshold: float = 0.05,
        min_tone_amplitude: float = 0.015,
        max_history: int = 100_000,
    ) -> None:
        self.sample_rate = sample_rate
        self.mark_interval_ms = mark_interval_ms
        self.mark_hz = mark_hz
        self.tone_hz = (
            tone_hz
            if tone_hz is not None
            else (tone_hz_for_source(source_id) if source_id is not None else None)
        )
        self.early_tolerance_ms = early_tolerance_ms
        self.on_threshold = on_threshold
        self.off_threshold = off_threshold
        self.min_tone_amplitude = min_tone_amplitude
        self.marks: deque[MarkEvent] = deque(maxlen=max_history)
        self.samples_fed = 0
        self.tone_amplitude = 0.0
        self._tone_history: deque[bool] = deque(maxlen=3)

        self._block = sample_rate // 100  # 10 ms
        n = np.arange(self._block)
        w = 2 * np.pi * mark_hz / sample_rate
        self._mk_cos = np.cos(w * n)
        self._mk_sin = np.sin(w * n)
        # envelope demodulation for onset refinement: moving average over ~3 cycles
        self._env_len = max(8, round(3 * sample_rate / mark_hz))
        self._tone_window = sample_rate // 10  # 100 ms -> 10 Hz bins
        # tone analysis: one row per candidate frequency (the expected one, or all 40
        # source frequencies when no source is given), 100 ms rectangular window
        freqs = (
            [self.tone_hz]
            if self.tone_hz is not None
            else [tone_hz_for_source(i) for i in range(40)]
        )
        self._tone_freqs = freqs
        m = np.arange(self._tone_window)
        wt = 2 * np.pi * np.array(freqs, dtype=np.float64)[:, None] / sample_rate
        self._tn_cos = np.cos(wt * m)
        self._tn_sin = np.sin(wt * m)
        self.heard_tone_hz: int | None = None
        # how many 100 ms windows each source slot was the tone heard in: who was heard, and
        # whether anyone else ever was
        self.heard_slots: Counter[int] = Counter()
        self._buf = np.zeros(0)  # recent samples: 2 consumed blocks + unconsumed tail
        self._buf_t = np.zeros(0)  # arrival time of each sample in _buf
        self._next_block = 0  # index in _buf of the next unprocessed block
        self._pending: int | None = None  # index in _buf of a block where an onset was seen
        self._in_mark = False
        self._quiet_blocks = 0
        self._tone_buf: list[F64] = []
        self._tone_buf_len = 0

    # -- feeding -----------------------------------------------------------
    def feed(self, frame: av.AudioFrame, arrival: float) -> list[MarkEvent]:
        """Feed one received frame; ``arrival`` is wall-clock seconds (time.time())."""
        if frame.sample_rate != self.sample_rate:
            raise ValueError(
                f"MarkDetector expects {self.sample_rate} Hz audio, got {frame.sample_rate} Hz"
            )
        return self.feed_samples(audio_frame_to_mono(frame), arrival)

    def feed_samples(
        self, samples: npt.NDArray[np.floating] | I16, arrival: float
    ) -> list[MarkEvent]:
        """Feed mono samples (float -1..1 or int16) that arrived at ``arrival`` (s)."""
        x = (
            samples.astype(np.float64) / 32768.0
            if samples.dtype == np.int16
            else samples.astype(np.float64)
        )
        n = len(x)
        if n == 0:
            return []
        t = arrival - (n - np.arange(n)) / self.sample_rate
        self.samples_fed += n
        self._feed_tone(x)
        self._buf = np.concatenate([self._buf, x])
        self._buf_t = np.concatenate([self._buf_t, t])
        found: list[MarkEvent] = []
        b = self._block
        pos = self._next_block  # relative to _buf
        while len(self._buf) - pos >= b:
            if self._pending is not None:
                # refine the onset found in the previous block with one block of context each side
                ev = self._refine(max(0, self._pending - b), pos + b)
                self._pending = None
                if ev is not None:
                    found.append(ev)
                    self.marks.append(ev)
            block = self._buf[pos : pos + b]
            amp = _goertzel_amp(block, self._mk_cos, self._mk_sin)
            if not self._in_mark:
                if amp >= self.on_threshold:
                    # only an onset after >= 30 ms of quiet counts (not a stream
                    # that starts in the middle of a mark)
                    if self._quiet_blocks >= 3:
                        self._pending = pos
                        self._in_mark = True
                    self._quiet_blocks = 0
                elif amp < self.off_threshold:
                    self._quiet_blocks += 1
            elif amp < self.off_threshold:
                self._quiet_blocks += 1
                if self._quiet_blocks >= 3:
                    self._in_mark = False
            else:
                self._quiet_blocks = 0
            pos += b
        # keep two consumed blocks (context for refinement) + the unconsumed tail
        keep_from = max(0, pos - 2 * b)
        self._buf = self._buf[keep_from:]
        self._buf_t = self._buf_t[keep_from:]
        self._next_block = pos - keep_from
        if self._pending is not None:
            self._pending -= keep_from
        return found

    def _refine(self, lo: int, hi: int) -> MarkEvent | None:
        seg = self._buf[lo:hi]
        if len(seg) < self._env_len * 2:
            return None
        ph = 2 * np.pi * self.mark_hz / self.sample_rate * np.arange(len(seg))
        demod = seg * np.exp(-1j * ph)
        c = np.concatenate([[0], np.cumsum(demod)])
        L = self._env_len
        env = np.abs(c[L:] - c[:-L]) * (2.0 / L)  # env[k] = amplitude over seg[k : k+L]
        peak = float(env.max())
        if peak < self.on_threshold:
            return None
        k = int(np.argmax(env >= 0.5 * peak))
        onset = lo + k + L // 2
        onset_arrival = float(self._buf_t[min(onset, len(self._buf_t) - 1)])
        iv = self.mark_interval_ms
        arr_ms = onset_arrival * 1000.0
        latency = (arr_ms + self.early_tolerance_ms) % iv - self.early_tolerance_ms
        mark_time = (arr_ms - latency) / 1000.0
        mark_time = round(mark_time * 1000.0 / iv) * iv / 1000.0
        return MarkEvent(
            onset_arrival=onset_arrival,
            mark_time=mark_time,
            latency_ms=(onset_arrival - mark_time) * 1000.0,
            level=peak,
        )

    def _feed_tone(self, x: F64) -> None:
        self._tone_buf.append(x)
        self._tone_buf_len += len(x)
        while self._tone_buf_len >= self._tone_window:
            allx = np.concatenate(self._tone_buf)
            win = allx[: self._tone_window]
            rest = allx[self._tone_window :]
            self._tone_buf = [rest] if len(rest) else []
            self._tone_buf_len = len(rest)
            amps = 2.0 * np.hypot(self._tn_cos @ win, self._tn_sin @ win) / len(win)
            best = int(np.argmax(amps))
            self.tone_amplitude = float(amps[best])
            present = self.tone_amplitude >= self.min_tone_amplitude
            self._tone_history.append(present)
            self.heard_tone_hz = self._tone_freqs[best] if present else None
            if self.heard_tone_hz is not None:
                self.heard_slots[(self.heard_tone_hz - 300) // 20] += 1

    # -- results -----------------------------------------------------------
    @property
    def latencies_ms(self) -> list[float]:
        return [m.latency_ms for m in self.marks]

    @property
    def tone_present(self) -> bool:
        """The source tone was found in at least 2 of the last 3 100-ms windows.

        With ``source_id``/``tone_hz`` given: that tone; otherwise any source tone.
        """
        return sum(self._tone_history) >= 2

    @property
    def heard_source_slot(self) -> int | None:
        """``source_id % 40`` of the strongest source tone in the last window, or None."""
        if self.heard_tone_hz is None:
            return None
        return (self.heard_tone_hz - 300) // 20
