"""Who is calling: JWT verification compatible with the Smiling Steps platform's tokens.

The platform signs `{"user": {"id", "role"}, "iat", "exp"}` with HS256 and trusts a token by its
signature alone; so do we. Tokens with a top-level `sub` + `role` are accepted too. The algorithm
is pinned to HS256, so `alg: none` and RS/HS confusion tricks are refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt

from storage.base import ROLES, is_object_id

ALGORITHM = "HS256"
DEFAULT_TOKEN_TTL = timedelta(hours=12)

# AuthError reasons (the `details.reason` of a 401).
MISSING_TOKEN = "MISSING_TOKEN"
MALFORMED_TOKEN = "MALFORMED_TOKEN"
INVALID_ALGORITHM = "INVALID_ALGORITHM"
INVALID_SIGNATURE = "INVALID_SIGNATURE"
TOKEN_EXPIRED = "TOKEN_EXPIRED"
TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"
INVALID_CLAIMS = "INVALID_CLAIMS"


class AuthError(Exception):
    """A token was refused; `reason` is one of the constants above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Identity:
    """Who is calling, as vouched for by a valid token."""

    user_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def decode_token(token: str, secret: str, *, now: datetime | None = None) -> Identity:
    """Verify `token` and return its identity, or raise `AuthError`.

    `exp` is required and checked against `now` (injectable for tests); PyJWT's own clock
    is switched off so the whole service agrees on one notion of time.
    """
    if not token or token.count(".") != 2:
        raise AuthError(MALFORMED_TOKEN, "Token is not a JWT")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise AuthError(MALFORMED_TOKEN, "Token header is unreadable") from None
    if header.get("alg") != ALGORITHM:
        raise AuthError(INVALID_ALGORITHM, f"Only {ALGORITHM} tokens are accepted")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError:
        raise AuthError(INVALID_SIGNATURE, "Token signature is invalid") from None
    except jwt.InvalidTokenError:
        raise AuthError(MALFORMED_TOKEN, "Token is malformed") from None
    _check_times(claims, now or datetime.now(UTC))
    return _identity_from_claims(claims)


def _check_times(claims: Mapping[str, Any], now: datetime) -> None:
    stamp = now.timestamp()
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
        raise AuthError(INVALID_CLAIMS, "Token has no valid expiry (exp)")
    if stamp >= exp:
        raise AuthError(TOKEN_EXPIRED, "Token has expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and not isinstance(nbf, bool) and stamp < nbf:
        raise AuthError(TOKEN_NOT_YET_VALID, "Token is not valid yet")


def _identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    user = claims.get("user")
    if isinstance(user, Mapping):
        user_id, role = user.get("id"), user.get("role")
    else:
        user_id, role = claims.get("sub"), claims.get("role")
    if not is_object_id(user_id):
        raise AuthError(INVALID_CLAIMS, "Token user id must be a 24-hex ObjectId")
    if not isinstance(role, str) or role not in ROLES:
        raise AuthError(INVALID_CLAIMS, f"Token role must be one of {', '.join(ROLES)}")
    assert isinstance(user_id, str)  # narrowed by is_object_id
    return Identity(user_id=user_id.lower(), role=role)


def mint_token(
    user_id: str,
    role: str,
    secret: str,
    *,
    ttl: timedelta = DEFAULT_TOKEN_TTL,
    now: datetime | None = None,
    shape: Literal["platform", "sub"] = "platform",
) -> str:
    """Sign a token the way the platform does (or with `sub` + `role` claims)."""
    if not is_object_id(user_id):
        raise ValueError("user_id must be a 24-hex ObjectId")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    issued = int((now or datetime.now(UTC)).timestamp())
    claims: dict[str, Any] = {"iat": issued, "exp": issued + int(ttl.total_seconds())}
    if shape == "platform":
        claims["user"] = {"id": user_id, "role": role}
    else:
        claims.update(sub=user_id, role=role)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def extract_token(headers: Mapping[str, str]) -> str | None:
    """The token from `x-auth-token` or `Authorization: Bearer …` (the platform takes both)."""
    token = headers.get("x-auth-token", "").strip()
    if token:
        return token
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
