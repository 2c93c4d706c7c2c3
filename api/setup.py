"""Wires the REST face into an app: its middlewares, its routes and the objects they read.

Called once by the composition root (`smiling_relay.app.create_app`), which builds the objects;
nothing here parses configuration or opens storage.
"""

from __future__ import annotations

from aiohttp import web

from api import admin, admin_metrics, health, nodes, ratings, routes
from api.admin_metrics import QualityReader
from api.errors import call_error_middleware, error_middleware
from api.keys import (
    API_RATE_LIMITER_KEY,
    E2EE_POLICY_KEY,
    QUALITY_KEY,
    RATINGS_KEY,
    SERVICE_KEY,
    STORAGE_KEY,
)
from api.middleware import (
    BODY_READ_TIMEOUT,
    body_timeout_middleware,
    cors_middleware,
    request_id_middleware,
    security_headers,
)
from api.nodes import FLEET_KEY, FleetView
from api.ratelimit import api_rate_limit_middleware
from calls.ratelimit import RateLimit
from calls.ratings import CallRatings, RatingObserver
from calls.service import CallService
from storage.base import Storage


def setup_api(
    app: web.Application,
    *,
    service: CallService,
    storage: Storage,
    rate_limiter: RateLimit,
    quality: QualityReader,
    cors_origins: tuple[str, ...] = (),
    hsts: bool = False,
    e2ee: str = "preferred",
    body_timeout: float = BODY_READ_TIMEOUT,
    rating_observer: RatingObserver | None = None,
    fleet: FleetView | None = None,
) -> None:
    """Register `/healthz`, `/api/video-calls/*`, `/api/admin/*` and the REST middlewares.

    `rating_observer` is told of every stored call rating (the metrics side's histogram);
    `fleet` (readiness, the nodes) adds `/readyz` and `/api/admin/nodes`."""
    app[SERVICE_KEY] = service
    app[STORAGE_KEY] = storage
    app[API_RATE_LIMITER_KEY] = rate_limiter
    app[QUALITY_KEY] = quality
    app[E2EE_POLICY_KEY] = e2ee
    app[RATINGS_KEY] = CallRatings(storage, service.audit, rating_observer)
    # Outermost first: the request id before anything logs; the body is read (within its
    # timeout) inside the envelope; the call-error translation is innermost so the rate-limit
    # headers and the envelope treat the service's refusals like any other ApiError.
    app.middlewares.append(request_id_middleware)
    if cors_origins:
        app.middlewares.append(cors_middleware(cors_origins))
    app.middlewares.extend(
        [
            error_middleware,
            body_timeout_middleware(body_timeout),
            api_rate_limit_middleware,
            call_error_middleware,
        ]
    )
    app.on_response_prepare.append(security_headers(hsts=hsts))
    app.add_routes(health.routes)
    app.add_routes(routes.routes)
    app.add_routes(admin.routes)
    app.add_routes(admin_metrics.routes)
    app.add_routes(ratings.routes)
    if fleet is not None:
        app[FLEET_KEY] = fleet
        app.add_routes(nodes.routes)
