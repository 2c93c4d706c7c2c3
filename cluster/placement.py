"""Where a call lives: placement of each call, whole, on one node (one worker process).

A call's lease (`call:{room_id}`) names the node holding it. Whoever receives a participant's
`join-room` asks `Placement.locate`: the call is here, on another live node (the WebSocket is
then bridged there), or nowhere yet, and then it is placed on the least-loaded node that is
live, not draining, under its cap and within its ramp-up budget, with one atomic
set-if-absent (two nodes placing the same call at once agree on the winner).

Anchors: LiveKit places rooms on nodes through Redis by load; Jitsi's Jicofo picks the
least-loaded bridge and ramps a fresh one up instead of handing it a burst of joins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from cluster.state import ClusterState, NodeStatus, StateUnavailable


@dataclass(frozen=True)
class PlacementSettings:
    # A call's lease lives this long unless its node renews it (every `heartbeat_interval`):
    # after a crash its calls can be placed again this soon.
    lease_ttl: float = 5.0
    heartbeat_interval: float = 1.0
    # A node without a heartbeat for this long is stale: skipped, its calls placed anew.
    node_ttl: float = 4.0
    # A node another one could not reach is taken for dead sooner: when its last heartbeat is
    # this old (a live node beats every second; a killed worker's port refuses at once).
    suspect_after: float = 1.5
    # Ramp-up: at most `ramp_calls` new calls placed on one node per `ramp_window` seconds.
    ramp_calls: int = 10
    ramp_window: float = 10.0


class NoNodeAvailable(Exception):
    """Every live node is full or draining (or none is live): the call cannot be placed."""


def lease_key(room_id: str) -> str:
    return f"call:{room_id}"


class Placement:
    """Answers "where is this call?", placing it if it is nowhere yet."""

    def __init__(
        self,
        state: ClusterState,
        me: Callable[[], NodeStatus],
        settings: PlacementSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self._me = me
        self.settings = settings or PlacementSettings()
        self._clock = clock

    async def locate(
        self, room_id: str, local_rooms: Collection[str], *, unreachable: str | None = None
    ) -> NodeStatus | None:
        """None: the call is (now) on this node; else the live node that holds it.

        A call with participants here is here without asking the state (so reconnecting to a
        live call works while the state is unreachable). `unreachable`: the node id that could
        not be reached just now (its call is placed anew if its heartbeat is late too). Raises
        `StateUnavailable` or `NoNodeAvailable`.
        """
        if room_id in local_rooms:
            return None
        me = self._me()
        key = lease_key(room_id)
        nodes = {node.node_id: node for node in await self.state.nodes()}
        nodes[me.node_id] = me  # this node's own view is fresher than its last heartbeat
        holder = await self.state.holder(key)
        if holder is not None:
            node = nodes.get(holder)
            if node is not None and not self._lost(node, room_id, unreachable):
                return None if node is me else node
            # A stale holder (crashed), or a draining one that nobody is with any more: the
            # call is placed anew (compare-and-delete: only if that holder still has it).
            await self.state.release(key, holder)
        if unreachable is not None:
            nodes.pop(unreachable, None)
        candidates = await self._by_load(self.candidates(nodes.values()))
        if not candidates:
            raise NoNodeAvailable("every node is full or draining")
        chosen = await self._within_ramp(candidates) or candidates[0]
        owner = await self.state.acquire(key, chosen.node_id, self.settings.lease_ttl)
        if owner == me.node_id:
            return None
        if owner in nodes:
            return nodes[owner]
        raise StateUnavailable(f"call {room_id} is held by an unknown node {owner}")

    async def _by_load(self, candidates: list[NodeStatus]) -> list[NodeStatus]:
        """Least loaded first, counting the calls placed on each node in the last ramp window
        too: a heartbeat is up to a second old, and a burst of joins within it would otherwise
        all go to the node that looked empty."""
        now, window = self._clock(), self.settings.ramp_window
        recent = {
            n.node_id: (await self.state.count(f"ramp:{n.node_id}", window, now)).count
            for n in candidates
        }
        return sorted(
            candidates,
            key=lambda n: ((n.calls + recent[n.node_id]) / n.capacity, n.streams, n.node_id),
        )

    async def _within_ramp(self, candidates: list[NodeStatus]) -> NodeStatus | None:
        """The least-loaded candidate with ramp-up budget left (None: none has; then the
        least loaded takes the call anyway: the ramp spreads a burst, it refuses nothing)."""
        for candidate in candidates:
            budget = await self.state.hit(
                f"ramp:{candidate.node_id}",
                self.settings.ramp_calls,
                self.settings.ramp_window,
                self._clock(),
            )
            if budget.allowed:
                return candidate
        return None

    def _lost(self, node: NodeStatus, room_id: str, unreachable: str | None) -> bool:
        """Whether a live holder lost the call: it drains and nobody is with it any more, or
        it could not be reached and its heartbeat is late."""
        if node.draining and room_id not in node.rooms:
            return True
        late = self._clock() - node.updated_at > self.settings.suspect_after
        return node.node_id == unreachable and late

    def candidates(self, nodes: Collection[NodeStatus]) -> list[NodeStatus]:
        """The nodes a new call may go to (`nodes` are the live ones), least loaded first:
        calls against the node's cap, then forwarded streams."""
        open_nodes = [n for n in nodes if not n.draining and n.calls < n.capacity]
        return sorted(open_nodes, key=lambda n: (n.calls / n.capacity, n.streams, n.node_id))
