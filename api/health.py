"""Liveness/readiness probe for orchestrators: `GET /healthz` (no authentication)."""

from __future__ import annotations

from aiohttp import web

from api.errors import SERVICE_UNAVAILABLE, ApiError, ok
from api.keys import STORAGE_KEY

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    storage = request.app[STORAGE_KEY]
    if not await storage.ping():
        raise ApiError(
            503, SERVICE_UNAVAILABLE, "Storage is not answering", {"storage": storage.backend}
        )
    return ok({"status": "ok", "storage": storage.backend})
