"""The fleet's shared state, behind one small interface with three backends:

- `cluster.memory_state.MemoryState`: one process (`RELAY_WORKERS=1`, no `REDIS_URL`);
- `cluster.sqlite_state.SqliteState`: one machine's workers (a SQLite file the supervisor
  creates; nothing extra to install);
- `cluster.redis_state.RedisState`: several machines (`REDIS_URL`).

Every operation is atomic in its backend (a lease is taken with set-if-absent and an expiry,
released with compare-and-delete). A backend that cannot be reached raises `StateUnavailable`
and recovers by itself when it can be reached again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


class StateUnavailable(Exception):
    """The shared state cannot be reached (Redis down, the SQLite file locked too long)."""


@dataclass(frozen=True)
class NodeStatus:
    """What a node (one worker process) announces in its heartbeat."""

    node_id: str
    # Where other nodes reach this one's internal listener (bridged WebSocket, RPCs).
    internal_url: str
    # Calls (rooms with participants) it holds, and the media streams it forwards.
    calls: int = 0
    streams: int = 0
    # The most calls it takes (placement skips a node at its cap).
    capacity: int = 0
    draining: bool = False
    # Unix time the node started (a young node is ramped up, not handed a burst).
    started_at: float = 0.0
    # Unix time of this heartbeat (set by the node, read by the others).
    updated_at: float = 0.0
    # The rooms it holds (the fleet's occupancy, for the stale-call check).
    rooms: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Hits:
    """A shared sliding-window counter's answer (see `ClusterState.hit`)."""

    allowed: bool
    # Hits counted within the window after this one (including it when allowed).
    count: int
    # Unix time the oldest counted hit leaves the window (now when none is counted).
    oldest: float


class ClusterState(Protocol):
    """The operations placement, the node agent and the shared rate limits need."""

    backend: str  # "memory", "sqlite" or "redis"

    async def acquire(self, key: str, owner: str, ttl: float) -> str:
        """Take the lease `key` for `owner` unless someone else holds a live one; return the
        holder afterwards (`owner` when taken or already held: then its expiry is renewed)."""
        ...

    async def refresh(self, keys: Iterable[str], owner: str, ttl: float) -> set[str]:
        """Renew `owner`'s leases in `keys`; a key with no holder is taken again (after the
        state lost it, e.g. a Redis restart). Returns the keys `owner` holds afterwards: a key
        missing from it is held by someone else now."""
        ...

    async def release(self, key: str, owner: str) -> bool:
        """Compare-and-delete: drop the lease only if `owner` holds it."""
        ...

    async def holder(self, key: str) -> str | None:
        """The live holder of `key`, if any."""
        ...

    async def heartbeat(self, status: NodeStatus, ttl: float) -> None:
        """Announce `status`; it counts as live for `ttl` seconds."""
        ...

    async def nodes(self) -> list[NodeStatus]:
        """The nodes with a live heartbeat."""
        ...

    async def forget(self, node_id: str) -> None:
        """Remove a node's heartbeat (it stopped cleanly)."""
        ...

    async def hit(self, key: str, limit: int, window: float, now: float) -> Hits:
        """Count one hit for `key` if fewer than `limit` fall within the last `window`
        seconds before `now` (a sliding log shared by every node). `now` is the caller's clock
        (the counters never read the backend's); a hit exactly `window` old is out. A refused
        hit is not counted."""
        ...

    async def count(self, key: str, window: float, now: float) -> Hits:
        """The same counter without counting a hit (`allowed` says whether one more would be
        counted under the limit the caller knows: backends set it True; see the limiter)."""
        ...

    async def ping(self) -> bool:
        """Whether the state answers now (readiness); never raises. SQLite: whether the write
        lock can be taken."""
        ...

    async def close(self) -> None:
        """Release the connection (and the SQLite backend's thread): the last call."""
        ...
