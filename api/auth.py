"""The caller's identity on a REST request: the token from the headers, verified once.

The token rules themselves (HS256 pinned, both payload shapes) are in `calls.identity`; the
service's clock and secret decide (`CallService.identify`).
"""

from __future__ import annotations

from aiohttp import web

from api.errors import ApiError
from api.keys import IDENTITY_KEY, SERVICE_KEY
from calls.errors import FORBIDDEN, UNAUTHORIZED
from calls.identity import MISSING_TOKEN, AuthError, Identity, extract_token

MISSING_TOKEN_MESSAGE = (
    "Authentication required: send the token as x-auth-token or Authorization: Bearer"
)


def identify(request: web.Request) -> Identity | AuthError:
    """The caller's identity (verified once per request), or why there is none."""
    cached: Identity | None = request.get(IDENTITY_KEY)
    if cached is not None:
        return cached
    token = extract_token(request.headers)
    if token is None:
        return AuthError(MISSING_TOKEN, MISSING_TOKEN_MESSAGE)
    try:
        identity = request.app[SERVICE_KEY].identify(token)
    except AuthError as exc:
        return exc
    request[IDENTITY_KEY] = identity
    return identity


def authenticate(request: web.Request) -> Identity:
    """The caller's identity; 401 in the envelope otherwise."""
    caller = identify(request)
    if isinstance(caller, AuthError):
        raise ApiError(401, UNAUTHORIZED, caller.message, {"reason": caller.reason})
    return caller


def try_authenticate(request: web.Request) -> Identity | None:
    """Like `authenticate` but None instead of a 401 (for rate-limit keys)."""
    caller = identify(request)
    return None if isinstance(caller, AuthError) else caller


def require_admin(request: web.Request) -> Identity:
    identity = authenticate(request)
    if not identity.is_admin:
        raise ApiError(403, FORBIDDEN, "Administrator role required")
    return identity
