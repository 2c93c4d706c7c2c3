"""JWT verification (calls/identity.py): the platform's payload, the alternative `sub` shape,
and every refusal."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from calls import identity as auth
from calls.identity import AuthError, Identity, decode_token, extract_token, mint_token
from tests.helpers import TEST_JWT_SECRET

USER = "507f1f77bcf86cd799439011"
NOW = datetime(2025, 12, 15, 14, 0, tzinfo=UTC)


def _sign(claims: dict[str, Any], secret: str = TEST_JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def _exp(minutes: int = 10) -> int:
    return int((NOW + timedelta(minutes=minutes)).timestamp())


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_platform_payload() -> None:
    token = _sign({"user": {"id": USER, "role": "psychologist"}, "iat": 1, "exp": _exp()})
    assert decode_token(token, TEST_JWT_SECRET, now=NOW) == Identity(USER, "psychologist")


def test_sub_payload_and_id_normalised() -> None:
    token = _sign({"sub": USER.upper(), "role": "admin", "exp": _exp()})
    identity = decode_token(token, TEST_JWT_SECRET, now=NOW)
    assert identity == Identity(USER, "admin")
    assert identity.is_admin


def test_mint_roundtrip_both_shapes() -> None:
    for shape in ("platform", "sub"):
        token = mint_token(USER, "client", TEST_JWT_SECRET, now=NOW, shape=shape)
        assert decode_token(token, TEST_JWT_SECRET, now=NOW) == Identity(USER, "client")
    with pytest.raises(ValueError, match="ObjectId"):
        mint_token("123", "client", TEST_JWT_SECRET)
    with pytest.raises(ValueError, match="role"):
        mint_token(USER, "root", TEST_JWT_SECRET)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", auth.MALFORMED_TOKEN),
        ("not-a-jwt", auth.MALFORMED_TOKEN),
        ("a.b.c", auth.MALFORMED_TOKEN),
        (
            _sign({"user": {"id": USER, "role": "client"}, "exp": _exp()}, secret="x" * 40),
            auth.INVALID_SIGNATURE,
        ),
        (
            _sign({"user": {"id": USER, "role": "client"}, "exp": _exp()}, "z" * 64, "HS512"),
            auth.INVALID_ALGORITHM,
        ),
        (
            _b64({"alg": "none", "typ": "JWT"})
            + "."
            + _b64({"user": {"id": USER, "role": "admin"}, "exp": _exp()})
            + ".",
            auth.INVALID_ALGORITHM,
        ),
        (_sign({"user": {"id": USER, "role": "client"}, "exp": _exp(-1)}), auth.TOKEN_EXPIRED),
        (_sign({"user": {"id": USER, "role": "client"}}), auth.INVALID_CLAIMS),
        (_sign({"user": {"id": USER, "role": "client"}, "exp": "soon"}), auth.INVALID_CLAIMS),
        (
            _sign({"user": {"id": USER, "role": "client"}, "exp": _exp(), "nbf": _exp(5)}),
            auth.TOKEN_NOT_YET_VALID,
        ),
        (_sign({"user": {"id": "42", "role": "client"}, "exp": _exp()}), auth.INVALID_CLAIMS),
        (_sign({"user": {"id": USER, "role": "root"}, "exp": _exp()}), auth.INVALID_CLAIMS),
        (_sign({"user": {"id": USER}, "exp": _exp()}), auth.INVALID_CLAIMS),
        (_sign({"sub": USER, "exp": _exp()}), auth.INVALID_CLAIMS),
        (_sign({"role": "client", "exp": _exp()}), auth.INVALID_CLAIMS),
    ],
    ids=[
        "empty",
        "garbage",
        "three-dots",
        "wrong-secret",
        "hs512",
        "alg-none",
        "expired",
        "no-exp",
        "bad-exp",
        "nbf-future",
        "bad-id",
        "bad-role",
        "no-role",
        "sub-no-role",
        "no-user",
    ],
)
def test_refused(token: str, reason: str) -> None:
    with pytest.raises(AuthError) as info:
        decode_token(token, TEST_JWT_SECRET, now=NOW)
    assert info.value.reason == reason


def test_expiry_edge() -> None:
    token = _sign({"user": {"id": USER, "role": "client"}, "exp": _exp(0)})
    with pytest.raises(AuthError):
        decode_token(token, TEST_JWT_SECRET, now=NOW)  # exp == now: expired
    assert decode_token(token, TEST_JWT_SECRET, now=NOW - timedelta(seconds=1)).user_id == USER


def test_extract_token() -> None:
    assert extract_token({"x-auth-token": " t1 "}) == "t1"
    assert extract_token({"Authorization": "Bearer t2"}) == "t2"
    assert extract_token({"Authorization": "bearer  t3"}) == "t3"
    assert extract_token({"Authorization": "Basic dXNlcjpwYXNz"}) is None
    assert extract_token({"x-auth-token": "t1", "Authorization": "Bearer t2"}) == "t1"
    assert extract_token({}) is None
