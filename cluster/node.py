"""The node agent: this worker's presence in the fleet.

Every `heartbeat_interval` it announces the node (load, cap, draining) and renews the leases of
the calls it holds. When the shared state cannot be reached it keeps the calls going (nothing
here touches media) and says it is not ready; when the state returns (a Redis restart may have
lost everything) the next beat announces the node and takes its calls' leases again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection

from cluster.placement import Placement, PlacementSettings, lease_key
from cluster.state import ClusterState, NodeStatus, StateUnavailable

log = logging.getLogger(__name__)


class NodeAgent:
    def __init__(
        self,
        state: ClusterState,
        *,
        node_id: str,
        internal_url: str,
        capacity: int,
        rooms: Callable[[], Collection[str]],
        streams: Callable[[], int],
        settings: PlacementSettings | None = None,
        clock: Callable[[], float] = time.time,
        on_beat: Callable[[bool, bool], None] = lambda reachable, draining: None,
    ) -> None:
        self.state = state
        self.node_id = node_id
        self.internal_url = internal_url
        self.capacity = capacity
        self.settings = settings or PlacementSettings()
        self.draining = False
        self._rooms = rooms
        self._streams = streams
        self._clock = clock
        # Told (reachable, draining) after every beat: the metrics' gauges.
        self._on_beat = on_beat
        self._started_at = clock()
        # When the state last answered a beat (None: not yet). Readiness reads it.
        self._last_beat: float | None = None
        self._outage_logged = False
        self.placement = Placement(state, self.status, self.settings, clock=clock)

    def status(self) -> NodeStatus:
        rooms = tuple(self._rooms())
        return NodeStatus(
            node_id=self.node_id,
            internal_url=self.internal_url,
            calls=len(rooms),
            streams=self._streams(),
            capacity=self.capacity,
            draining=self.draining,
            started_at=self._started_at,
            updated_at=self._clock(),
            rooms=rooms,
        )

    @property
    def reachable(self) -> bool:
        """Whether the shared state answered within the last `node_ttl` seconds."""
        last = self._last_beat
        return last is not None and self._clock() - last <= self.settings.node_ttl

    async def locate(self, room_id: str, *, unreachable: str | None = None) -> NodeStatus | None:
        return await self.placement.locate(room_id, self._rooms(), unreachable=unreachable)

    async def beat(self) -> None:
        """Announce this node and renew its calls' leases once."""
        try:
            await self._beat()
        finally:
            self._on_beat(self.reachable, self.draining)

    async def _beat(self) -> None:
        status = self.status()
        try:
            await self.state.heartbeat(status, self.settings.node_ttl)
            keys = {lease_key(room): room for room in status.rooms}
            held = await self.state.refresh(keys, self.node_id, self.settings.lease_ttl)
        except StateUnavailable as exc:
            if not self._outage_logged:
                log.warning("placement state unreachable (%s): calls go on, none is placed", exc)
                self._outage_logged = True
            return
        if self._outage_logged:
            log.info("placement state reachable again")
            self._outage_logged = False
        self._last_beat = self._clock()
        for key in keys.keys() - held:
            # Someone else took the call while we could not renew (a long outage): both rooms
            # go on; the participants who join from now on reach the new holder.
            log.warning("call %s is now held by another node", keys[key])

    async def drain(self) -> None:
        """Take no new calls from now on (told to the others at once)."""
        self.draining = True
        await self.beat()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Beat while the block runs; at the end leave the fleet cleanly."""
        await self.beat()
        task = asyncio.create_task(self._beat_loop(), name="node heartbeat")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(StateUnavailable):
                for room in self._rooms():
                    await self.state.release(lease_key(room), self.node_id)
                await self.state.forget(self.node_id)

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self.beat()
            except Exception:
                log.exception(
                    "node heartbeat failed; next one in %.1f s", self.settings.heartbeat_interval
                )
