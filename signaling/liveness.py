"""Is the client still there? The relay's keep-alive verdict for one signaling socket.

A socket silent for `PING_AFTER` seconds is pinged; one that answers nothing for `PONG_WAIT`
more is a dead link (noticed 3–4.5 s after the link died; the seat is then held,
docs/signaling.md) — unless the participant's media still arrives. On a weak link the socket's
TCP stalls for seconds behind lost segments (retransmission back-off doubles from 200 ms),
while the participant's audio and the reports of its subscriber connection, over UDP, still
get through: such a link is alive, and dropping it would cut a call that audio first is keeping
going. Then only `STALE_AFTER` seconds of silence on the socket itself end it, more than the
page's own 20 s (web/js/signaling.js `staleAfterMs`, the same rule): the page decides first.

A pure verdict on an injected clock: the connection feeds it (`heard` per frame received,
`check` every `TICK` with a snapshot of the media counters) and acts on what it says.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable

PING_AFTER = 3.0
PONG_WAIT = 1.5
STALE_AFTER = 25.0
TICK = 0.5


class Verdict(enum.Enum):
    PING = "ping"
    DEAD = "dead"


class Liveness:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.heard_at = clock()  # the socket's last frame (any: a message, a pong, a ping)
        self._pinged_at: float | None = None
        self._media: Hashable = None
        self.media_at = self.heard_at  # when the media counters last moved

    def heard(self) -> None:
        self.heard_at = self._clock()
        self._pinged_at = None

    def check(self, media: Hashable) -> Verdict | None:
        """`media`: a snapshot of counters that move while the participant's media arrives
        (None when it has no media connection)."""
        now = self._clock()
        if media is not None and self._media is not None and media != self._media:
            self.media_at = now  # (a first snapshot says nothing about whether they move)
        self._media = media
        silent = now - self.heard_at
        if silent < PING_AFTER:
            return None
        if silent >= PING_AFTER + PONG_WAIT:
            media_alive = media is not None and now - self.media_at < PING_AFTER + PONG_WAIT
            if not media_alive or silent >= STALE_AFTER:
                return Verdict.DEAD
        if self._pinged_at is None or now - self._pinged_at >= PING_AFTER:
            self._pinged_at = now
            return Verdict.PING
        return None
