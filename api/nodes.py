"""Readiness and the fleet's nodes: `GET /readyz` (no authentication), `GET /api/admin/nodes`,
`POST /api/admin/nodes/{nodeId}/drain` (admin).

`/healthz` answers for the process itself (liveness: restart it when it fails); `/readyz`
answers whether this node should be sent new calls (readiness: 503 while it drains or while
placement is unreachable). Kept apart so that an outage of the shared state makes nodes
unready, never unhealthy: an orchestrator must not restart every node, and drop every call,
because Redis is down (LiveKit's users learnt that the hard way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from api.auth import require_admin
from api.errors import NOT_FOUND, SERVICE_UNAVAILABLE, ApiError, ok

routes = web.RouteTableDef()

NODE_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,80}$")


@dataclass(frozen=True)
class Readiness:
    ready: bool
    # The node's id, whether it drains, whether placement answers (shown either way).
    details: dict[str, Any]


class FleetView(Protocol):
    """What the REST face may see of the fleet (the composition root implements it)."""

    async def readiness(self) -> Readiness: ...

    async def nodes(self) -> list[dict[str, Any]]:
        """The live nodes as JSON objects (id, load, cap, draining, heartbeat time)."""
        ...

    async def drain(self, node_id: str) -> bool:
        """Put that node into draining; False when no live node has that id."""
        ...


FLEET_KEY: web.AppKey[FleetView] = web.AppKey("api.fleet")


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    readiness = await request.app[FLEET_KEY].readiness()
    if not readiness.ready:
        raise ApiError(503, SERVICE_UNAVAILABLE, "This node takes no new calls", readiness.details)
    return ok({"status": "ready", **readiness.details})


@routes.get("/api/admin/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    require_admin(request)
    return ok({"nodes": await request.app[FLEET_KEY].nodes()})


@routes.post("/api/admin/nodes/{nodeId}/drain")
async def drain_node(request: web.Request) -> web.Response:
    require_admin(request)
    node_id = request.match_info["nodeId"]
    if not NODE_ID_RE.match(node_id) or not await request.app[FLEET_KEY].drain(node_id):
        raise ApiError(404, NOT_FOUND, "No live node has that id", {"nodeId": node_id})
    return ok({"nodeId": node_id, "draining": True}, status=202)
