"""This node in the fleet: the composition root's glue between `cluster` (placement, the node
agent), the relay, the call service and the faces (docs/scaling.md).

- `Locator`: placement as signaling sees it (a node URL or "here"), refusals as `CallError`.
- `NodeFleet`: readiness, the nodes list and remote drains for the REST face; the drain itself
  (SIGTERM): no new calls, the calls here go on until they end or `DRAIN_TIMEOUT` passes.
- The internal listener's RPCs (`/internal/...`, the fleet's secret only): end a call held
  here, drain this node.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web

from api.nodes import Readiness
from calls.errors import unavailable
from calls.service import CallEnded, CallService
from cluster.node import NodeAgent
from cluster.placement import NoNodeAvailable, lease_key
from cluster.state import ClusterState, NodeStatus, StateUnavailable
from relay.sfu import Relay
from signaling.bridge import SECRET_HEADER
from signaling.connection import end_call

log = logging.getLogger(__name__)

DRAIN_REASON = "server-drain"
DRAIN_POLL = 0.5  # seconds between checks whether a draining node is empty
RPC_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
END_CALL_PATH = "/internal/calls/{roomId}/end"
DRAIN_PATH = "/internal/drain"


def occupied_rooms(relay: Relay) -> list[str]:
    """The calls this node holds: rooms with someone in them (or a seat held for someone)."""
    return [room_id for room_id, room in relay.rooms.items() if room.participants or room.held]


class Locator:
    """`signaling.bridge.CallLocator` over the node agent."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        # The node ids behind the URLs handed out (a few per node: bounded by the fleet).
        self._node_ids: dict[str, str] = {}

    async def locate(self, room_id: str, *, unreachable: str | None = None) -> str | None:
        suspect = self._node_ids.get(unreachable) if unreachable else None
        try:
            node = await self.agent.locate(room_id, unreachable=suspect)
        except StateUnavailable:
            raise unavailable(
                "new calls cannot be placed right now (placement is unreachable); try again", 5
            ) from None
        except NoNodeAvailable:
            message = "every server is full or shutting down; try again in a minute"
            raise unavailable(message, 30) from None
        if node is None:
            return None
        self._node_ids[node.internal_url] = node.node_id
        return node.internal_url


class NodeFleet:
    """This node's part of the fleet, for the faces and the server (see module doc)."""

    def __init__(
        self,
        agent: NodeAgent,
        state: ClusterState,
        *,
        relay: Callable[[], Relay],
        service: CallService,
        secret: str,
        http: Callable[[], aiohttp.ClientSession],
        drain_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent = agent
        self.state = state
        self._relay = relay
        self._service = service
        self._secret = secret
        self._http = http
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._draining: asyncio.Task[None] | None = None
        # Set by the server (`smiling_relay.server.run`): what SIGTERM does.
        self.stop: Callable[[], None] | None = None

    # -- for the REST face (api.nodes.FleetView) --------------------------------------------

    async def readiness(self) -> Readiness:
        details = {
            "node": self.agent.node_id,
            "draining": self.agent.draining,
            "placement": "ok" if self.agent.reachable else "unreachable",
            "placementBackend": self.state.backend,
        }
        return Readiness(not self.agent.draining and self.agent.reachable, details)

    async def nodes(self) -> list[dict[str, Any]]:
        nodes = await self._live()
        return [node_json(node) for node in sorted(nodes, key=lambda n: n.node_id)]

    async def _live(self) -> list[NodeStatus]:
        """The live nodes, for an admin's request (a refusal to retry when unreachable)."""
        try:
            return await self.state.nodes()
        except StateUnavailable as exc:
            raise unavailable(f"placement is unreachable: {exc}", 5) from None

    async def live_nodes(self) -> set[str]:
        """The ids of the live nodes (raises `StateUnavailable`)."""
        return {node.node_id for node in await self.state.nodes()}

    async def drain(self, node_id: str) -> bool:
        if node_id == self.agent.node_id:
            self.request_stop()
            return True
        node = next((n for n in await self._live() if n.node_id == node_id), None)
        if node is None:
            return False
        await self._rpc(node.internal_url, DRAIN_PATH, {})
        return True

    # -- ending calls held elsewhere ---------------------------------------------------------

    async def call_ended(self, ended: CallEnded) -> None:
        """`CallService.on_call_ended`: the call ends here, or on the node that holds it."""
        if ended.room_id is None:
            return
        if ended.room_id in self._relay().rooms:
            await end_call(self._relay(), ended)
            return
        try:
            holder = await self.state.holder(lease_key(ended.room_id))
            nodes = {n.node_id: n for n in await self.state.nodes()}
        except StateUnavailable:
            log.warning("call %s ended, but its node cannot be told now", ended.room_id)
            return
        if holder is not None and holder != self.agent.node_id and holder in nodes:
            path = END_CALL_PATH.format(roomId=ended.room_id)
            await self._rpc(nodes[holder].internal_url, path, ended_json(ended))

    async def fleet_occupancy(self) -> Collection[str] | None:
        """The calls with participants on any node (None when placement cannot say)."""
        local = occupied_rooms(self._relay())
        try:
            nodes = await self.state.nodes()
        except StateUnavailable:
            return None
        return {*local, *(room for node in nodes for room in node.rooms)}

    async def _rpc(self, base_url: str, path: str, body: dict[str, Any]) -> None:
        url = base_url.rstrip("/") + path
        headers = {SECRET_HEADER: f"Bearer {self._secret}"}
        try:
            async with self._http().post(
                url, json=body, headers=headers, timeout=RPC_TIMEOUT
            ) as response:
                if response.status >= 300:
                    log.warning("%s answered %d", url, response.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("%s failed: %s", url, exc)

    # -- the drain -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """An admin's drain: the same as SIGTERM (stop accepting, drain, exit; under the
        supervisor the worker is then started afresh). Without a server (tests) it drains."""
        if self.stop is not None:
            self.stop()
        else:
            self.start_drain()

    def start_drain(self) -> asyncio.Task[None]:
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain(), name="drain")
        return self._draining

    async def drain_here(self) -> None:
        """What the server awaits on SIGTERM (`smiling_relay.app.DRAIN_KEY`)."""
        await self.start_drain()

    async def _drain(self) -> None:
        await self.agent.drain()
        relay = self._relay()
        hosted = set(occupied_rooms(relay))
        log.info(
            "draining: no new calls; %d call(s) go on (at most %.0f s)",
            len(hosted),
            self._drain_timeout,
        )
        deadline = self._clock() + self._drain_timeout
        empty_polls = 0
        # Done when no call is held here for two polls in a row (a participant reconnecting
        # leaves its room empty for a moment), or at the deadline.
        while empty_polls < 2 and self._clock() < deadline:
            rooms = occupied_rooms(relay)
            hosted.update(rooms)
            empty_polls = 0 if rooms else empty_polls + 1
            await asyncio.sleep(min(DRAIN_POLL, max(deadline - self._clock(), 0.0)))
        stragglers = occupied_rooms(relay)
        if stragglers:
            log.warning("drain deadline: ending %d call(s) still in progress", len(stragglers))
        await self._end_calls_left(hosted, stragglers)
        log.info("drained")

    async def _end_calls_left(self, hosted: Collection[str], stragglers: Collection[str]) -> None:
        """End the stragglers (past the deadline), and the calls this node held that nobody is
        in any more when no other node is left to end them later (the fleet's stale-call check
        does that, after CALL_IDLE_END_MINUTES): no call stays In Progress without an end."""
        try:
            others = [n for n in await self.state.nodes() if n.node_id != self.agent.node_id]
        except StateUnavailable:
            others = []
        elsewhere = {room for node in others for room in node.rooms}
        last_node = not any(not node.draining for node in others)
        await self._service.end_stale_calls(
            elsewhere,
            idle_after=timedelta(0),
            only_rooms=set(hosted) if last_node else set(stragglers),
            reason=DRAIN_REASON,
        )


def node_json(node: NodeStatus) -> dict[str, Any]:
    return {
        "nodeId": node.node_id,
        "calls": node.calls,
        "streams": node.streams,
        "capacity": node.capacity,
        "draining": node.draining,
        "startedAt": node.started_at,
        "heartbeatAt": node.updated_at,
        "rooms": list(node.rooms),
    }


def ended_json(ended: CallEnded) -> dict[str, Any]:
    return {
        "sessionId": ended.session_id,
        "roomId": ended.room_id,
        "endedByUserId": ended.ended_by_user_id,
        "endedByRole": ended.ended_by_role,
        "durationMinutes": ended.duration_minutes,
    }


def open_state(redis_url: str | None, state_file: str | None) -> ClusterState:
    """Redis for several machines, the supervisor's SQLite file for one machine's workers,
    memory for a single process."""
    if redis_url:
        from cluster.redis_state import RedisState

        return RedisState(redis_url)
    if state_file:
        from cluster.sqlite_state import SqliteState

        return SqliteState(state_file)
    from cluster.memory_state import MemoryState

    return MemoryState()


def internal_routes(
    app: web.Application,
    fleet: Callable[[], NodeFleet],
    relay: Callable[[], Relay],
    secret: str,
) -> None:
    """Register the node-internal RPCs (the fleet's secret only)."""

    def check(request: web.Request) -> None:
        shown = request.headers.get(SECRET_HEADER, "").removeprefix("Bearer ")
        if not hmac.compare_digest(shown.encode(), secret.encode()):
            raise web.HTTPForbidden(reason="internal: the fleet's secret is required")

    async def end(request: web.Request) -> web.Response:
        check(request)
        try:
            body = await request.json()
            ended = CallEnded(
                session_id=str(body["sessionId"]),
                room_id=request.match_info["roomId"],
                ended_by_user_id=body.get("endedByUserId"),
                ended_by_role=str(body.get("endedByRole", "server")),
                duration_minutes=body.get("durationMinutes"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise web.HTTPBadRequest(reason="internal: a CallEnded object is expected") from None
        await end_call(relay(), ended)
        return web.json_response({"ended": True})

    async def drain(request: web.Request) -> web.Response:
        check(request)
        fleet().request_stop()
        return web.json_response({"draining": True}, status=202)

    app.router.add_post(END_CALL_PATH, end)
    app.router.add_post(DRAIN_PATH, drain)
