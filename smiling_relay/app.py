"""The aiohttp application factory: the composition root of the service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from api.admin import routes as admin_routes
from api.errors import NOT_FOUND, ApiError, error_middleware
from api.health import routes as health_routes
from api.middleware import Middleware, cors_middleware, security_headers
from api.ratelimit import RateLimiter, api_rate_limit_middleware
from api.routes import routes as video_call_routes
from metrics.setup import setup_metrics
from signaling.server import setup_signaling
from smiling_relay.appkeys import (
    API_RATE_LIMITER_KEY,
    CONFIG_KEY,
    STORAGE_KEY,
    WS_RATE_LIMITER_KEY,
)
from smiling_relay.config import Config
from storage.base import Storage
from storage.factory import open_storage

log = logging.getLogger(__name__)

# `web/` sits next to the packages, in a checkout and in an installed copy alike.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_BODY_BYTES = 256 * 1024


def create_app(
    config: Config, storage: Storage | None = None, *, web_dir: Path | None = None
) -> web.Application:
    """Build the application.

    `storage` defaults to the configured backend, opened and closed with the app. A storage
    passed in belongs to the caller: the app initializes it (idempotent) but does not close it.
    """
    middlewares: list[Middleware] = []
    if config.cors_origins:
        middlewares.append(cors_middleware(config.cors_origins))
    middlewares += [error_middleware, api_rate_limit_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(security_headers(hsts=config.is_production))

    app[CONFIG_KEY] = config
    app[STORAGE_KEY] = storage if storage is not None else open_storage(config)

    def epoch() -> float:
        return config.clock().timestamp()

    app[API_RATE_LIMITER_KEY] = RateLimiter(config.rate_limit_api_per_min, clock=epoch)
    app[WS_RATE_LIMITER_KEY] = RateLimiter(config.rate_limit_ws_per_min, clock=epoch)

    # Registered first so it is torn down last: the relay's cleanup may still write to storage.
    app.cleanup_ctx.append(_storage_lifetime(owned=storage is None))

    app.add_routes(health_routes)
    app.add_routes(video_call_routes)
    app.add_routes(admin_routes)

    setup_signaling(app)
    setup_metrics(app)
    _setup_web_client(app, web_dir or WEB_DIR)
    return app


def _storage_lifetime(*, owned: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        storage = app[STORAGE_KEY]
        await storage.initialize()
        log.info("storage ready (%s)", storage.backend)
        yield
        if owned:
            await storage.close()

    return lifetime


def _setup_web_client(app: web.Application, web_dir: Path) -> None:
    """`/` and `/call/{sessionId}` serve the browser client; `/static/` its assets."""
    index = web_dir / "index.html"

    async def serve_index(request: web.Request) -> web.StreamResponse:
        if not index.is_file():
            raise ApiError(404, NOT_FOUND, "The browser client is not installed (web/index.html)")
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", serve_index)
    app.router.add_get("/call/{sessionId}", serve_index)
    if web_dir.is_dir():
        app.router.add_static("/static/", web_dir, follow_symlinks=False)
    else:
        log.warning("no browser client at %s; /static/ is not served", web_dir)
