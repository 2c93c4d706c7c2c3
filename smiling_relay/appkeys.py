"""Typed keys for the state shared through the aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from api.ratelimit import RateLimiter
    from calls.identity import Identity
    from relay.sfu import Relay
    from smiling_relay.config import Config
    from storage.base import Storage

RELAY_KEY: web.AppKey[Relay] = web.AppKey("relay")

# The validated configuration (also carries the injectable clock: `app[CONFIG_KEY].clock()`).
CONFIG_KEY: web.AppKey[Config] = web.AppKey("config")
# The repository (SQLite or MongoDB); opened by the app's cleanup context.
STORAGE_KEY: web.AppKey[Storage] = web.AppKey("storage")
# Per-user request budget for /api/video-calls/* (RATE_LIMIT_API_PER_MIN).
API_RATE_LIMITER_KEY: web.AppKey[RateLimiter] = web.AppKey("api_rate_limiter")
# Per-user WebSocket connection budget (RATE_LIMIT_WS_PER_MIN); the /ws handler calls `.hit()`.
WS_RATE_LIMITER_KEY: web.AppKey[RateLimiter] = web.AppKey("ws_rate_limiter")

# Set on a request once its token has been verified (see `api.auth.authenticate`).
IDENTITY_KEY: web.RequestKey[Identity] = web.RequestKey("identity")
