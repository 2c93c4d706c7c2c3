"""Configuration read from the environment, with the platform's variable names.

Everything the service needs is parsed and validated here, once, at start-up: a bad value stops
the process with a `ConfigError` that names the variable, instead of failing later mid-call.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from storage.crypto import EncryptionKeyError, parse_keys

log = logging.getLogger(__name__)

# End-to-end media encryption in the browsers (docs/e2ee.md): refuse, allow or skip the fallback.
E2EE_POLICIES = ("required", "preferred", "off")
PRODUCTION_NAMES = frozenset({"production", "prod"})
MIN_SECRET_LENGTH = 32
LOG_FORMATS = ("json", "text")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def utc_now() -> datetime:
    """The default clock: timezone-aware UTC now."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Config:
    """The service's settings: `Config.from_env()`; tests derive variants with `replace`."""

    jwt_secret: str
    # True when no JWT_SECRET was given and a random one was generated (development only).
    jwt_secret_generated: bool = False
    environment: str = "development"
    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str | None = None
    mongodb_uri: str | None = None
    sqlite_path: str = "data/relay.sqlite3"
    stun_server_url: str | None = None
    turn_server_url: str | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    # TURN REST API (coturn --use-auth-secret): ephemeral credentials instead of a static pair.
    turn_secret: str | None = None
    turn_credential_ttl: int = 86400
    turn_urls: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    room_max_participants: int = 4
    relay_announced_ip: str | None = None
    relay_bind_ips: tuple[str, ...] = ()
    relay_udp_ports: tuple[int, int] | None = None
    rate_limit_api_per_min: int = 10
    rate_limit_ws_per_min: int = 3
    # Calls with per-call Prometheus series (0 disables them).
    metrics_max_calls: int = 200
    # Seconds between quality samples.
    metrics_sample_interval: float = 1.0
    # When set, `/metrics` requires `Authorization: Bearer <token>`.
    metrics_auth_token: str | None = None
    # Field-level encryption at rest of the SQLite store's personal data (storage/crypto.py):
    # `id:base64key[,id:base64key…]`, the first entry current. Never printed.
    data_encryption_key: str | None = field(default=None, repr=False)
    # E2EE=required|preferred|off, handed to the page in /api/video-calls/config.
    e2ee: str = "preferred"
    # -- HTTP hardening and operations (docs: README "Configuration", "Production notes") --
    # TLS in the server itself (HTTPS and WSS, TLS >= 1.2) when both files are given.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # With TLS: a plain-HTTP port that only redirects to HTTPS (None: no plain listener).
    http_redirect_port: int | None = None
    # "json" (one object per line) or "text"; default json in production, text otherwise.
    log_format: str = "text"
    # Seconds an announced request body may take to arrive (then 408).
    http_body_timeout: float = 10.0
    # A started call whose room stayed empty this long is ended by the server (0 disables).
    call_idle_end_minutes: float = 15.0
    # Hardening of the WebSocket and media side (signaling/limits.py, relay/candidates.py).
    relay_allowed_peer_ranges: tuple[str, ...] = ()  # CIDRs the relay may send ICE checks to
    ws_max_pending_per_ip: int = 10
    ws_max_connections_per_user: int = 3
    ws_messages_per_second: float = 20.0
    ws_message_burst: int = 40
    # Injected so time-window rules are testable without sleeping; never compared or printed.
    clock: Callable[[], datetime] = field(default=utc_now, compare=False, repr=False)

    @property
    def is_production(self) -> bool:
        return self.environment in PRODUCTION_NAMES

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def storage_backend(self) -> str:
        return "mongodb" if self.mongodb_uri else "sqlite"

    def base_url(self) -> str:
        """Where a browser on this machine reaches the service (for printed links)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Parse and validate the environment (default `os.environ`)."""
        env = _Env(os.environ if environ is None else environ)
        environment = (env.get_str("APP_ENV") or env.get_str("NODE_ENV") or "development").lower()
        is_production = environment in PRODUCTION_NAMES

        jwt_secret = env.get_str("JWT_SECRET")
        generated = False
        if jwt_secret is None:
            if is_production:
                raise ConfigError(
                    "JWT_SECRET is required in production: set it to the platform's token "
                    "signing secret (the same value the Smiling Steps API uses)."
                )
            jwt_secret = secrets.token_hex(32)
            generated = True
        elif len(jwt_secret) < MIN_SECRET_LENGTH:
            log.warning(
                "JWT_SECRET is shorter than %d characters; HS256 secrets that short are weak",
                MIN_SECRET_LENGTH,
            )

        udp_ports = env.get_port_range("RELAY_UDP_PORTS")
        metrics_token = env.get_str("METRICS_AUTH_TOKEN")
        if is_production and metrics_token is None:
            raise ConfigError(
                "METRICS_AUTH_TOKEN is required in production: /metrics shows call ids and "
                "roles; set a random token and give Prometheus the same one (deploy/prometheus)."
            )
        tls_cert, tls_key = env.get_file("TLS_CERT_FILE"), env.get_file("TLS_KEY_FILE")
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        redirect_port = env.get_optional_int("HTTP_REDIRECT_PORT", minimum=0, maximum=65535)
        if redirect_port is not None and tls_cert is None:
            raise ConfigError("HTTP_REDIRECT_PORT needs TLS_CERT_FILE and TLS_KEY_FILE")
        log_format = (env.get_str("LOG_FORMAT") or ("json" if is_production else "text")).lower()
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"LOG_FORMAT must be json or text, got {log_format!r}")
        data_key = env.get_str("DATA_ENCRYPTION_KEY")
        if data_key is not None:
            try:
                parse_keys(data_key)
            except EncryptionKeyError as exc:
                raise ConfigError(f"DATA_ENCRYPTION_KEY: {exc}") from None
        return cls(
            jwt_secret=jwt_secret,
            jwt_secret_generated=generated,
            environment=environment,
            host=env.get_str("HOST") or "0.0.0.0",
            port=env.get_int("PORT", 8080, minimum=0, maximum=65535),
            public_url=env.get_url("PUBLIC_URL", schemes=("http", "https")),
            mongodb_uri=env.get_url("MONGODB_URI", schemes=("mongodb", "mongodb+srv")),
            sqlite_path=env.get_str("SQLITE_PATH") or "data/relay.sqlite3",
            stun_server_url=env.get_ice_url("STUN_SERVER_URL", schemes=("stun", "stuns")),
            turn_server_url=env.get_ice_url("TURN_SERVER_URL", schemes=("turn", "turns")),
            turn_username=env.get_str("TURN_USERNAME"),
            turn_password=env.get_str("TURN_PASSWORD"),
            turn_secret=env.get_str("TURN_SECRET"),
            turn_credential_ttl=env.get_int("TURN_CREDENTIAL_TTL", 86400, minimum=60),
            turn_urls=tuple(
                _check_ice_url("TURN_URLS", u, ("turn", "turns")) for u in env.get_list("TURN_URLS")
            ),
            cors_origins=env.get_list("CORS_ORIGIN"),
            room_max_participants=env.get_int("ROOM_MAX_PARTICIPANTS", 4, minimum=2, maximum=64),
            relay_announced_ip=env.get_ip("RELAY_ANNOUNCED_IP"),
            relay_bind_ips=tuple(
                _check_ip("RELAY_BIND_IPS", ip) for ip in env.get_list("RELAY_BIND_IPS")
            ),
            relay_udp_ports=udp_ports,
            rate_limit_api_per_min=env.get_int("RATE_LIMIT_API_PER_MIN", 10, minimum=0),
            rate_limit_ws_per_min=env.get_int("RATE_LIMIT_WS_PER_MIN", 3, minimum=0),
            metrics_max_calls=env.get_int("METRICS_MAX_CALLS", 200, minimum=0),
            metrics_sample_interval=env.get_float("METRICS_SAMPLE_INTERVAL", 1.0, minimum=0.1),
            metrics_auth_token=metrics_token,
            data_encryption_key=data_key,
            e2ee=_check_choice("E2EE", env.get_str("E2EE") or "preferred", E2EE_POLICIES),
            tls_cert_file=tls_cert,
            tls_key_file=tls_key,
            http_redirect_port=redirect_port,
            log_format=log_format,
            http_body_timeout=env.get_float("HTTP_BODY_TIMEOUT", 10.0, minimum=0.1),
            call_idle_end_minutes=env.get_float("CALL_IDLE_END_MINUTES", 15.0, minimum=0.0),
            relay_allowed_peer_ranges=tuple(
                _check_cidr("RELAY_ALLOWED_PEER_RANGES", r)
                for r in env.get_list("RELAY_ALLOWED_PEER_RANGES")
            ),
            ws_max_pending_per_ip=env.get_int("WS_MAX_PENDING_PER_IP", 10, minimum=1),
            ws_max_connections_per_user=env.get_int("WS_MAX_CONNECTIONS_PER_USER", 3, minimum=1),
            ws_messages_per_second=env.get_float("WS_MESSAGES_PER_SECOND", 20.0, minimum=1.0),
            ws_message_burst=env.get_int("WS_MESSAGE_BURST", 40, minimum=1),
        )


class _Env:
    """Typed accessors over an environment mapping; empty strings count as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get_str(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def get_int(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        raw = self.get_str(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{name} must be {bound}, got {value}")
        return value

    def get_optional_int(self, name: str, *, minimum: int, maximum: int) -> int | None:
        return (
            None
            if self.get_str(name) is None
            else self.get_int(name, 0, minimum=minimum, maximum=maximum)
        )

    def get_file(self, name: str) -> str | None:
        path = self.get_str(name)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{name} must name a readable file, got {path!r}")
        return path

    def get_float(self, name: str, default: float, *, minimum: float) -> float:
        raw = self.get_str(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not value >= minimum:  # also refuses NaN
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        return value

    def get_list(self, name: str) -> tuple[str, ...]:
        raw = self.get_str(name)
        if raw is None:
            return ()
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def get_url(self, name: str, *, schemes: tuple[str, ...]) -> str | None:
        raw = self.get_str(name)
        if raw is None:
            return None
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme.lower() not in schemes or not rest:
            raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, got {raw!r}")
        return raw

    def get_ice_url(self, name: str, *, schemes: tuple[str, ...]) -> str | None:
        raw = self.get_str(name)
        return None if raw is None else _check_ice_url(name, raw, schemes)

    def get_ip(self, name: str) -> str | None:
        raw = self.get_str(name)
        return None if raw is None else _check_ip(name, raw)

    def get_port_range(self, name: str) -> tuple[int, int] | None:
        raw = self.get_str(name)
        if raw is None:
            return None
        low_s, sep, high_s = raw.partition("-")
        try:
            low, high = int(low_s), int(high_s)
        except ValueError:
            raise ConfigError(f"{name} must look like 40000-40999, got {raw!r}") from None
        if not sep or not (1024 <= low <= high <= 65535):
            raise ConfigError(f"{name} must be an ascending range within 1024-65535, got {raw!r}")
        return (low, high)


def _check_ice_url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    # ICE URLs are `stun:host[:port]` / `turn:host[:port][?transport=udp]` (RFC 7064/7065).
    scheme, sep, rest = value.partition(":")
    if not sep or scheme.lower() not in schemes or not rest or rest.startswith("//"):
        raise ConfigError(
            f"{name} must be a {'/'.join(schemes)}: URL like stun:host:3478, got {value!r}"
        )
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value.lower() not in choices:
        raise ConfigError(f"{name} must be one of {'|'.join(choices)}, got {value!r}")
    return value.lower()


def _check_cidr(name: str, value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(
            f"{name} must contain CIDR ranges like 10.0.0.0/8, got {value!r}"
        ) from None
    return value


def _check_ip(name: str, value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{name} must contain IP addresses, got {value!r}") from None
    return value
