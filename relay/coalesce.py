"""Fewer event-loop wake-ups: let datagrams gather for a fraction of a millisecond.

Each time asyncio's loop has nothing to do it blocks in `epoll_wait`, and the next datagram wakes
it. Under a relay's load that is a wake-up for every one or two datagrams, and a wake-up costs
more than forwarding the packet: the interpreter's working set is cold after the other processes
ran (bench_hotpath --socket: 25 µs of forwarding per packet warm, ≈ 85 µs with a wake-up per
two packets).

`CoalescingSelector` is asyncio's own epoll selector, except when the loop would block: it then
polls once, and when nothing is ready, sleeps `delay` (0.5 ms by default) before it blocks. A
datagram that arrives while the loop idles waits at most `delay`; one that arrives while the loop
works waits as before; all that arrived during the pause are served by one wake-up, with warm
caches. Timers are not delayed beyond their own due time by more than `delay`.

`event_loop(delay)` makes a loop with it (`delay` 0: asyncio's default loop).
"""

from __future__ import annotations

import asyncio
import selectors
import time

DEFAULT_DELAY = 0.0005  # seconds; the latency goal allows "a fraction of a millisecond"


class CoalescingSelector(selectors.EpollSelector):
    def __init__(self, delay: float = DEFAULT_DELAY) -> None:
        super().__init__()
        self.delay = delay
        self.pauses = 0  # how often the loop paused instead of blocking at once

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)  # the loop has work: it only polls
        ready = super().select(0)
        if ready:
            return ready
        pause = self.delay if timeout is None else min(self.delay, timeout)
        self._pause(pause)
        self.pauses += 1
        return super().select(None if timeout is None else max(timeout - pause, 0))

    def _pause(self, seconds: float) -> None:
        time.sleep(seconds)


def event_loop(delay: float = DEFAULT_DELAY) -> asyncio.AbstractEventLoop:
    """A new event loop, coalescing wake-ups by `delay` seconds (0: asyncio's own)."""
    if delay <= 0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(CoalescingSelector(delay))
