"""The WebRTC ICE server list handed to browsers (`GET /api/video-calls/config`).

With `turn_secret` set, TURN credentials follow the TURN REST API that coturn implements
(`--use-auth-secret`): username `<unix expiry>:<user id>`, credential
`base64(HMAC-SHA1(secret, username))`, so no long-lived TURN password reaches a browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class IceSettings:
    """The STUN/TURN part of the configuration (built from `Config` by the composition root)."""

    stun_server_url: str | None = None
    turn_server_url: str | None = None
    turn_urls: tuple[str, ...] = ()
    turn_username: str | None = None
    turn_password: str | None = None
    # TURN REST API (coturn --use-auth-secret): ephemeral credentials instead of a static pair.
    turn_secret: str | None = None
    turn_credential_ttl: int = 86400


def turn_rest_credentials(secret: str, user_id: str, expires_at: int) -> tuple[str, str]:
    username = f"{expires_at}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def turn_urls(settings: IceSettings) -> list[str]:
    urls = [settings.turn_server_url] if settings.turn_server_url else []
    urls.extend(u for u in settings.turn_urls if u not in urls)
    return urls


def ice_servers(settings: IceSettings, *, user_id: str, now: datetime) -> list[dict[str, Any]]:
    """RTCIceServer dicts for `user_id`; empty when nothing is configured (host candidates only)."""
    servers: list[dict[str, Any]] = []
    if settings.stun_server_url:
        servers.append({"urls": settings.stun_server_url})
    urls = turn_urls(settings)
    if not urls:
        return servers
    url_value: str | list[str] = urls[0] if len(urls) == 1 else urls
    if settings.turn_secret:
        expires_at = int(now.timestamp()) + settings.turn_credential_ttl
        username, credential = turn_rest_credentials(settings.turn_secret, user_id, expires_at)
        servers.append({"urls": url_value, "username": username, "credential": credential})
    elif settings.turn_username and settings.turn_password:
        servers.append(
            {
                "urls": url_value,
                "username": settings.turn_username,
                "credential": settings.turn_password,
            }
        )
    return servers
