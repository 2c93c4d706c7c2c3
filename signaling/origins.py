"""Which browser pages may open `/ws`: the `Origin` check made before the upgrade.

A WebSocket is not covered by CORS: any page the user visits could open one to the relay with the
user's token if it had it, and browsers always send `Origin` on the upgrade. Allowed: the page's
own origin (the same host as the request), the configured `CORS_ORIGIN` list (`*` for any) and
`PUBLIC_URL`'s origin. A request without `Origin` is no browser's (aiortc, synth, scripts) and
is allowed: the token still decides who it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

_DEFAULT_PORTS = (":80", ":443")


def _origin_of(url: str) -> str:
    parts = urlsplit(url.strip().rstrip("/").lower())
    return f"{parts.scheme}://{parts.netloc}"


def _without_default_port(netloc: str) -> str:
    for port in _DEFAULT_PORTS:
        if netloc.endswith(port):
            return netloc[: -len(port)]
    return netloc


@dataclass(frozen=True)
class OriginPolicy:
    allowed: frozenset[str] = frozenset()  # `scheme://host[:port]`, lower case
    allow_any: bool = False

    @classmethod
    def of(cls, cors_origins: tuple[str, ...], public_url: str | None) -> OriginPolicy:
        listed = [o for o in cors_origins if o != "*"]
        if public_url:
            listed.append(public_url)
        return cls(frozenset(_origin_of(o) for o in listed), "*" in cors_origins)

    def refusal(self, origin: str | None, host: str | None) -> str | None:
        """Why a page of `origin` may not connect to this server at `host`, or None."""
        if origin is None or self.allow_any:
            return None
        try:
            normalized = _origin_of(origin)
            netloc = urlsplit(normalized).netloc
        except ValueError:  # e.g. an unclosed IPv6 bracket
            return "the Origin header is not a URL origin"
        if normalized in self.allowed:
            return None
        if netloc and host and _without_default_port(netloc) == _without_default_port(host.lower()):
            return None
        return f"pages of {origin[:200]!r} may not connect here"
