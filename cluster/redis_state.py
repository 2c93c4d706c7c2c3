"""`ClusterState` for several machines: one Redis (`REDIS_URL`), shared by every node.

- a lease is a key holding its owner, set with `SET NX PX` (inside the lease script, so taking
  a free key and renewing one's own is one atomic step); release is a compare-and-delete script;
- a heartbeat is `node:{id}` (the status as JSON, expiring with `PX`) plus the node's id in the
  `nodes` set; `nodes()` is one script that reads the live ones and drops the dead ids;
- a shared counter is a sliding log in a sorted set (score = hit time), trimmed, counted and
  added to by one script, expiring with its window.

Several keys are touched by one script, so this needs one Redis (with replicas if you like), not
Redis Cluster. Expiry is Redis's own clock; the hit times are the callers' (`now`).

Every Redis failure (refused, reset, timed out) raises `StateUnavailable`. The client reconnects
by itself: a pooled connection broken by a restart is retried once at once (so the first command
after Redis returns succeeds), a refused or timed-out one is not retried (so an outage is
reported within `socket_timeout`, not after a backoff).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from cluster.codec import decode_status, encode_status
from cluster.state import Hits, NodeStatus, StateUnavailable

T = TypeVar("T")

DEFAULT_PREFIX = "smiling-relay:"

# KEYS: the leases; ARGV: owner, ttl (ms). Returns each key's holder afterwards.
_LEASE = """
local owner, ttl = ARGV[1], ARGV[2]
local holders = {}
for i, key in ipairs(KEYS) do
  local holder = owner
  if not redis.call('SET', key, owner, 'NX', 'PX', ttl) then
    holder = redis.call('GET', key)
    -- (the key cannot expire in between: time stands still inside a script)
    if holder == owner then
      redis.call('PEXPIRE', key, ttl)
    end
  end
  holders[i] = holder
end
return holders
"""

# KEYS: the lease; ARGV: owner. Deletes it only if owner holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: the node id set; ARGV: the status keys' prefix. Returns the live statuses.
_NODES = """
local live = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local status = redis.call('GET', ARGV[1] .. id)
  if status then
    live[#live + 1] = status
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return live
"""

# KEYS: the log; ARGV: cutoff (hits at or before it left the window), now, a unique member,
# limit, window (ms). Returns {allowed, count, the oldest hit's time or ''}.
_HIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  count = count + 1
  allowed = 1
end
if count > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {allowed, count, oldest[2] or ''}
"""

# KEYS: the log; ARGV: cutoff. Returns {count, the oldest counted hit's time or ''}.
_COUNT = """
local after = '(' .. ARGV[1]
local count = redis.call('ZCOUNT', KEYS[1], after, '+inf')
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {count, oldest[2] or ''}
"""


class RedisState:
    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        socket_timeout: float = 1.0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        # Redis expires keys by its own clock; `clock` only stands in for `now` where the
        # interface leaves it out, so every backend is built alike.
        self._clock = clock
        self.prefix = prefix
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            decode_responses=True,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._lease = self._redis.register_script(_LEASE)
        self._release = self._redis.register_script(_RELEASE)
        self._nodes = self._redis.register_script(_NODES)
        self._hit = self._redis.register_script(_HIT)
        self._count = self._redis.register_script(_COUNT)

    # -- leases -----------------------------------------------------------------------------

    async def acquire(self, key: str, owner: str, ttl: float) -> str:
        holders = await self._call(self._lease(keys=[self._lease_key(key)], args=[owner, _ms(ttl)]))
        return str(holders[0])

    async def refresh(self, keys: Iterable[str], owner: str, ttl: float) -> set[str]:
        keys = list(keys)
        if not keys:
            return set()
        lease_keys = [self._lease_key(key) for key in keys]
        holders = await self._call(self._lease(keys=lease_keys, args=[owner, _ms(ttl)]))
        return {key for key, holder in zip(keys, holders, strict=True) if holder == owner}

    async def release(self, key: str, owner: str) -> bool:
        deleted = await self._call(self._release(keys=[self._lease_key(key)], args=[owner]))
        return bool(deleted)

    async def holder(self, key: str) -> str | None:
        holder = await self._call(self._redis.get(self._lease_key(key)))
        return None if holder is None else str(holder)

    # -- heartbeats -------------------------------------------------------------------------

    async def heartbeat(self, status: NodeStatus, ttl: float) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._node_key(status.node_id), encode_status(status), px=_ms(ttl))
            pipe.sadd(self._nodes_key, status.node_id)
            await self._call(pipe.execute())

    async def nodes(self) -> list[NodeStatus]:
        live = await self._call(self._nodes(keys=[self._nodes_key], args=[self._node_key("")]))
        return sorted((decode_status(text) for text in live), key=lambda s: s.node_id)

    async def forget(self, node_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._node_key(node_id))
            pipe.srem(self._nodes_key, node_id)
            await self._call(pipe.execute())

    # -- shared counters --------------------------------------------------------------------

    async def hit(self, key: str, limit: int, window: float, now: float) -> Hits:
        # repr() keeps every bit of the float (Lua would print it with 14 digits)
        args: list[str | int] = [
            repr(now - window),
            repr(now),
            f"{now!r}:{os.urandom(6).hex()}",
            limit,
            _ms(window),
        ]
        allowed, counted, oldest = await self._call(
            self._hit(keys=[self._hits_key(key)], args=args)
        )
        return Hits(bool(allowed), int(counted), _reset(oldest, window, now))

    async def count(self, key: str, window: float, now: float) -> Hits:
        counted, oldest = await self._call(
            self._count(keys=[self._hits_key(key)], args=[repr(now - window)])
        )
        return Hits(True, int(counted), _reset(oldest, window, now))

    # -- the rest ---------------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._redis.ping()))
        except StateUnavailable:
            return False

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except (RedisError, OSError) as exc:  # OSError: the socket's own (refused, reset)
            raise StateUnavailable(f"redis: {exc}") from exc

    def _lease_key(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    def _node_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    @property
    def _nodes_key(self) -> str:
        return f"{self.prefix}nodes"

    def _hits_key(self, key: str) -> str:
        return f"{self.prefix}hits:{key}"


def _ms(seconds: float) -> int:
    """A positive whole number of milliseconds (PX refuses 0)."""
    return max(1, math.ceil(seconds * 1000))


def _reset(oldest: Any, window: float, now: float) -> float:
    return float(oldest) + window if oldest not in (None, "") else now
