"""`ClusterState` for one process (`RELAY_WORKERS=1`, no `REDIS_URL`): plain dictionaries.

Nothing is shared, so nothing can be unreachable: no operation raises `StateUnavailable`.
Expiry reads the injected clock (leases, heartbeats); the counters read the `now` their caller
passes, like the other backends.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from cluster.state import Hits, NodeStatus

# Sweep expired leases, heartbeats and idle counters after this many writes, so memory stays
# bounded under many distinct keys without a timer.
_SWEEP_EVERY = 1024


class MemoryState:
    backend = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # key -> (owner, expires at)
        self._leases: dict[str, tuple[str, float]] = {}
        # node id -> (status, expires at)
        self._nodes: dict[str, tuple[NodeStatus, float]] = {}
        # counter key -> (window, the counted hits' times, oldest first)
        self._hits: dict[str, tuple[float, deque[float]]] = {}
        self._writes = 0
        # The counters run on their callers' time (`now`): the latest one sweeps them.
        self._hits_now = 0.0

    # -- leases -----------------------------------------------------------------------------

    async def acquire(self, key: str, owner: str, ttl: float) -> str:
        self._wrote()
        return self._take(key, owner, ttl, self._clock())

    async def refresh(self, keys: Iterable[str], owner: str, ttl: float) -> set[str]:
        self._wrote()
        now = self._clock()
        return {key for key in keys if self._take(key, owner, ttl, now) == owner}

    async def release(self, key: str, owner: str) -> bool:
        held = self._leases.get(key)
        if held is None or held[0] != owner:
            return False
        del self._leases[key]
        return held[1] > self._clock()

    async def holder(self, key: str) -> str | None:
        held = self._leases.get(key)
        return held[0] if held is not None and held[1] > self._clock() else None

    def _take(self, key: str, owner: str, ttl: float, now: float) -> str:
        held = self._leases.get(key)
        if held is not None and held[0] != owner and held[1] > now:
            return held[0]
        self._leases[key] = (owner, now + ttl)
        return owner

    # -- heartbeats -------------------------------------------------------------------------

    async def heartbeat(self, status: NodeStatus, ttl: float) -> None:
        self._wrote()
        self._nodes[status.node_id] = (status, self._clock() + ttl)

    async def nodes(self) -> list[NodeStatus]:
        now = self._clock()
        live = [status for status, expires in self._nodes.values() if expires > now]
        return sorted(live, key=lambda status: status.node_id)

    async def forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    # -- shared counters --------------------------------------------------------------------

    async def hit(self, key: str, limit: int, window: float, now: float) -> Hits:
        self._hits_now = now
        self._wrote()
        entry = self._hits.get(key)
        hits = entry[1] if entry is not None else deque()
        self._hits[key] = (window, hits)  # the latest window decides when the key is idle
        _expire(hits, now - window)
        allowed = len(hits) < limit
        if allowed:
            hits.append(now)
        return Hits(allowed, len(hits), hits[0] + window if hits else now)

    async def count(self, key: str, window: float, now: float) -> Hits:
        entry = self._hits.get(key)
        if entry is None:
            return Hits(True, 0, now)
        hits = entry[1]
        _expire(hits, now - window)
        return Hits(True, len(hits), hits[0] + window if hits else now)

    # -- the rest ---------------------------------------------------------------------------

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._leases.clear()
        self._nodes.clear()
        self._hits.clear()

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep(self._clock(), self._hits_now)

    def _sweep(self, now: float, hits_now: float) -> None:
        for key in [k for k, (_, expires) in self._leases.items() if expires <= now]:
            del self._leases[key]
        for node_id in [n for n, (_, expires) in self._nodes.items() if expires <= now]:
            del self._nodes[node_id]
        idle = [
            k
            for k, (window, hits) in self._hits.items()
            if not hits or hits[-1] <= hits_now - window
        ]
        for key in idle:
            del self._hits[key]


def _expire(hits: deque[float], cutoff: float) -> None:
    """Drop the hits at or before `cutoff` (they left the window)."""
    while hits and hits[0] <= cutoff:
        hits.popleft()
