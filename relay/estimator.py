"""The uplink's delay-based bandwidth estimate: aiortc's REMB estimator, its two loops made short.

The relay feeds aiortc's `RemoteBitrateEstimator` once per video frame (relay/producer.py). Two
of its parts loop over their whole window on every frame, in Python:

* the incoming-rate counter keeps 1 ms buckets over 1 s and clears, one by one, every bucket the
  window moved past since the last frame (≈ 33 per frame at 30 fps);
* the overuse estimator takes the minimum of the last 60 frame periods by scanning them all.

With the relay's profile at 16 calls, the estimator was a fifth of the relay's CPU (docs/
benchmarks.md). `RemoteBitrateEstimator` here computes the same values: the counter keeps the
values added (a handful per window) instead of buckets, and the minimum is a sliding-window
minimum (a monotonic queue). Everything else is aiortc's, unchanged; tests/relay/unit/
test_estimator.py checks the estimates are identical.
"""

from __future__ import annotations

from collections import deque

from aiortc import rate

FRAME_PERIODS = rate.MIN_FRAME_PERIOD_HISTORY_LENGTH  # 60


class WindowRate:
    """aiortc's `RateCounter` (the rate over the last `window_size` ms, scaled), amortized O(1)."""

    def __init__(self, window_size: int, scale: int = 8000) -> None:
        self._window = window_size
        self._scale = scale
        self.reset()

    def reset(self) -> None:
        self._entries: deque[tuple[int, int]] = deque()
        self._origin_ms: int | None = None
        self._count = 0
        self._value = 0

    def add(self, value: int, now_ms: int) -> None:
        if self._origin_ms is None:
            self._origin_ms = now_ms
        else:
            self._erase_old(now_ms)
        self._entries.append((now_ms, value))
        self._count += 1
        self._value += value

    def rate(self, now_ms: int) -> int | None:
        if self._origin_ms is not None:
            self._erase_old(now_ms)
            active_window_size = now_ms - self._origin_ms + 1
            if self._count > 0 and active_window_size > 1:
                return round(self._scale * self._value / active_window_size)
        return None

    def _erase_old(self, now_ms: int) -> None:
        assert self._origin_ms is not None
        new_origin_ms = now_ms - self._window + 1
        if self._origin_ms < new_origin_ms:
            entries = self._entries
            while entries and entries[0][0] < new_origin_ms:
                _, value = entries.popleft()
                self._count -= 1
                self._value -= value
            self._origin_ms = new_origin_ms


class OveruseEstimator(rate.OveruseEstimator):
    """aiortc's, with the minimum frame period over the last 60 kept as a sliding minimum."""

    def __init__(self) -> None:
        super().__init__()
        self._periods: deque[tuple[int, float]] = deque()  # (index, period), periods increasing
        self._index = 0

    def update_min_frame_period(self, ts_delta: float) -> float:
        index, periods = self._index, self._periods
        self._index += 1
        while periods and periods[-1][1] >= ts_delta:
            periods.pop()
        periods.append((index, ts_delta))
        while periods[0][0] <= index - FRAME_PERIODS:
            periods.popleft()
        return periods[0][1]


class RemoteBitrateEstimator(rate.RemoteBitrateEstimator):
    def __init__(self) -> None:
        super().__init__()
        self.incoming_bitrate = WindowRate(1000, 8000)  # type: ignore[assignment]
        self.estimator = OveruseEstimator()
