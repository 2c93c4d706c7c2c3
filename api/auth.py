"""The caller's identity on a REST request: the token from the headers, verified once.

The token rules themselves (HS256 pinned, both payload shapes) are in `calls.identity`.
"""

from __future__ import annotations

from aiohttp import web

from api.errors import FORBIDDEN, UNAUTHORIZED, ApiError
from calls.identity import MISSING_TOKEN, AuthError, Identity, decode_token, extract_token
from smiling_relay.appkeys import CONFIG_KEY, IDENTITY_KEY


def authenticate(request: web.Request) -> Identity:
    """The caller's identity, verified once per request; 401 in the envelope otherwise."""
    cached: Identity | None = request.get(IDENTITY_KEY)
    if cached is not None:
        return cached
    config = request.app[CONFIG_KEY]
    token = extract_token(request.headers)
    if token is None:
        raise ApiError(
            401,
            UNAUTHORIZED,
            "Authentication required: send the token as x-auth-token or Authorization: Bearer",
            {"reason": MISSING_TOKEN},
        )
    try:
        identity = decode_token(token, config.jwt_secret, now=config.clock())
    except AuthError as exc:
        raise ApiError(401, UNAUTHORIZED, exc.message, {"reason": exc.reason}) from None
    request[IDENTITY_KEY] = identity
    return identity


def try_authenticate(request: web.Request) -> Identity | None:
    """Like `authenticate` but None instead of a 401 (for rate-limit keys and audit)."""
    try:
        return authenticate(request)
    except ApiError:
        return None


def require_admin(request: web.Request) -> Identity:
    identity = authenticate(request)
    if not identity.is_admin:
        raise ApiError(403, FORBIDDEN, "Administrator role required")
    return identity
