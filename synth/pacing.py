"""Real-time pacing for tracks that replay pre-encoded media."""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """Releases item n at start + n × interval on the monotonic clock.

    When the consumer falls more than `max_lag` seconds behind, the clock moves forward instead of
    releasing a burst to catch up (the timestamps stay continuous).
    """

    def __init__(self, interval: float, max_lag: float) -> None:
        self.interval = interval
        self.max_lag = max_lag
        self._start: float | None = None

    async def wait(self, count: int) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return
        target = self._start + count * self.interval
        if target > now:
            await asyncio.sleep(target - now)
        elif now - target > self.max_lag:
            self._start = now - count * self.interval
