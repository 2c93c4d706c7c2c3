"""What one client may hold of the WebSocket face: unauthenticated upgrades per IP in flight,
sessions per user, messages per second per connection (docs/signaling.md, "Limits")."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SignalingLimits:
    # Upgraded connections of one IP address that have not authenticated yet (each may wait up
    # to the 10 s authentication timeout); further upgrades get 429 before upgrading.
    max_pending_per_ip: int = 10
    # Authenticated connections of one user at once (each holds up to two peer connections).
    max_sessions_per_user: int = 3
    # Per connection, a token bucket: `messages_per_second` sustained, `message_burst` at once.
    messages_per_second: float = 20.0
    message_burst: int = 40


@dataclass
class Occupancy:
    """Counted places per key (an IP address, a user id), at most `limit` each."""

    limit: int
    _held: Counter[str] = field(default_factory=Counter)

    def take(self, key: str) -> Place | None:
        """A place for `key`, or None when it already holds `limit` of them."""
        if self._held[key] >= self.limit:
            return None
        self._held[key] += 1
        return Place(self, key)

    def held(self, key: str) -> int:
        return self._held[key]

    def _give_back(self, key: str) -> None:
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]  # no entry left behind per address or user ever seen


class Place:
    """One taken place; `release()` may be called any number of times."""

    def __init__(self, occupancy: Occupancy | None, key: str) -> None:
        self._occupancy = occupancy
        self._key = key

    def release(self) -> None:
        if self._occupancy is not None:
            self._occupancy._give_back(self._key)
            self._occupancy = None


NO_PLACE = Place(None, "")  # for what is not counted: releasing it does nothing


class TokenBucket:
    """`rate` tokens a second up to `burst`; each message takes one."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def retry_after(self) -> float:
        """Seconds until the next message is accepted."""
        return max(0.0, (1.0 - self._tokens) / self._rate)
