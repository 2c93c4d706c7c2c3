"""The WebRTC ICE server list handed to browsers (`GET /api/video-calls/config`).

With `TURN_SECRET` set, TURN credentials follow the TURN REST API that coturn implements
(`--use-auth-secret`): username `<unix expiry>:<user id>`, credential
`base64(HMAC-SHA1(secret, username))`, so no long-lived TURN password reaches a browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from typing import Any

from smiling_relay.config import Config


def turn_rest_credentials(secret: str, user_id: str, expires_at: int) -> tuple[str, str]:
    username = f"{expires_at}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def turn_urls(config: Config) -> list[str]:
    urls = [config.turn_server_url] if config.turn_server_url else []
    urls.extend(u for u in config.turn_urls if u not in urls)
    return urls


def ice_servers(config: Config, *, user_id: str, now: datetime) -> list[dict[str, Any]]:
    """RTCIceServer dicts for `user_id`; empty when nothing is configured (host candidates only)."""
    servers: list[dict[str, Any]] = []
    if config.stun_server_url:
        servers.append({"urls": config.stun_server_url})
    urls = turn_urls(config)
    if not urls:
        return servers
    url_value: str | list[str] = urls[0] if len(urls) == 1 else urls
    if config.turn_secret:
        expires_at = int(now.timestamp()) + config.turn_credential_ttl
        username, credential = turn_rest_credentials(config.turn_secret, user_id, expires_at)
        servers.append({"urls": url_value, "username": username, "credential": credential})
    elif config.turn_username and config.turn_password:
        servers.append(
            {
                "urls": url_value,
                "username": config.turn_username,
                "credential": config.turn_password,
            }
        )
    return servers
