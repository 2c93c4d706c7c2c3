"""The application keys the REST face reads; only `api.setup.setup_api` sets them (tests may set
them directly on a bare app).

Each face declares its own keys (`signaling.setup`, `metrics.keys`); the composition root
(`smiling_relay.app.create_app`) hands every face its objects through its setup function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from api.admin_metrics import QualityReader
    from calls.identity import Identity
    from calls.ratelimit import RateLimit
    from calls.ratings import CallRatings
    from calls.service import CallService
    from storage.base import Storage

# The domain: authentication, the join policy, audit, and the service's clock.
SERVICE_KEY: web.AppKey[CallService] = web.AppKey("api.service")
# The repository, for the admin and health endpoints (the video-call routes go through the service).
STORAGE_KEY: web.AppKey[Storage] = web.AppKey("api.storage")
# Per-user request budget for /api/video-calls/* (RATE_LIMIT_API_PER_MIN).
API_RATE_LIMITER_KEY: web.AppKey[RateLimit] = web.AppKey("api.rate_limiter")
# The stored quality data behind /api/admin/metrics/* (implemented by metrics.setup.Metrics).
QUALITY_KEY: web.AppKey[QualityReader] = web.AppKey("api.quality")

# Participants' call-quality ratings (POST /api/video-calls/rating/{sessionId}).
RATINGS_KEY: web.AppKey[CallRatings] = web.AppKey("api.ratings")

# Set on a request once its token has been verified (see `api.auth.authenticate`).
IDENTITY_KEY: web.RequestKey[Identity] = web.RequestKey("api.identity")
# The page's end-to-end encryption policy (E2EE: required | preferred | off), in /config.
E2EE_POLICY_KEY: web.AppKey[str] = web.AppKey("api.e2ee_policy")
