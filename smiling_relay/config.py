"""Configuration read from the environment, with the platform's variable names.

Everything the service needs is parsed and validated here, once, at start-up: a bad value stops
the process with a `ConfigError` that names the variable, instead of failing later mid-call.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from storage.crypto import EncryptionKeyError, parse_keys

log = logging.getLogger(__name__)

# End-to-end media encryption in the browsers (docs/e2ee.md): refuse, allow or skip the fallback.
E2EE_POLICIES = ("required", "preferred", "off")
ON_OFF = ("on", "off")
PRODUCTION_NAMES = frozenset({"production", "prod"})
MIN_SECRET_LENGTH = 32
LOG_FORMATS = ("json", "text")
MAX_WORKERS = 64
# A node id names a worker in logs, metrics labels and the shared state (keys, heartbeats).
MAX_NODE_ID_LENGTH = 64
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_DRAIN_TIMEOUT = 8100.0  # 2 h 15 min: a 2-hour session and its late start
# CLUSTER_SECRET's default: HMAC-SHA256(JWT_SECRET, this label), so one secret set is enough and
# the tokens' secret itself never travels between nodes.
CLUSTER_SECRET_LABEL = b"smiling-relay cluster secret v1"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def default_workers() -> int:
    """One worker per core this process may run on (the affinity mask, which containers'
    cpusets narrow, else `os.cpu_count()`), within 1..MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def default_node_id() -> str:
    """The host name, reduced to the node-id alphabet, short enough for `-wNN` suffixes."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "relay"
    return name[: MAX_NODE_ID_LENGTH - len("-w63")]


def derive_cluster_secret(jwt_secret: str) -> str:
    return hmac.new(jwt_secret.encode(), CLUSTER_SECRET_LABEL, hashlib.sha256).hexdigest()


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
    # Seconds a participant whose connection went away keeps its seat (0: leaves at once).
    seat_grace_seconds: float = 60.0
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
    # AUDIO_FIRST=on|off: pause a participant's video while its link is too weak for it, keep
    # the voice (relay/adaptation.py).
    audio_first: bool = True
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
    # -- Scale-out (docs/scaling.md) --
    # Worker processes `serve` runs on this machine (1: today's single process, no supervisor).
    workers: int = 1
    # Redis shared by the nodes of several machines (placement, leases, shared rate limits).
    redis_url: str | None = None
    # Seconds a draining worker waits for its calls to end before it ends the stragglers.
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    # relay/coalesce.py: the event loop pauses this long before it blocks (0: asyncio's own)
    media_coalesce_ms: float = 0.5
    # This node's (worker's) name in the fleet; the supervisor gives its workers `{id}-w{i}`.
    node_id: str = "relay"
    # Set by the supervisor in its workers' environment (not a user setting).
    worker_index: int | None = None
    # The node-internal listener (bridged WebSockets, RPCs, per-worker /metrics); None: none.
    internal_host: str = "127.0.0.1"
    internal_port: int | None = None
    # RELAY_INTERNAL_URL: where the other nodes reach the internal listener, when the bind
    # address does not say it (`{port}` is replaced by the worker's internal port).
    internal_url_override: str | None = None
    # The most calls placement hands one worker.
    worker_max_calls: int = 60
    # Signs what nodes send each other (bridged sockets, RPCs). Never printed.
    cluster_secret: str = field(default="", repr=False)
    # The one-machine shared state (SQLite) the supervisor's workers share (set by it).
    cluster_state_file: str | None = None
    # Injected so time-window rules are testable without sleeping; never compared or printed.
    clock: Callable[[], datetime] = field(default=utc_now, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.cluster_secret:  # a Config built in code derives it as from_env does
            object.__setattr__(self, "cluster_secret", derive_cluster_secret(self.jwt_secret))
        if self.internal_port is None and self.redis_url and self.port and self.port <= 65435:
            # One process in a fleet of machines: the others must be able to bridge to it.
            object.__setattr__(self, "internal_port", self.port + 100)

    @property
    def is_production(self) -> bool:
        return self.environment in PRODUCTION_NAMES

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def storage_backend(self) -> str:
        return "mongodb" if self.mongodb_uri else "sqlite"

    @property
    def clustered(self) -> bool:
        """A worker of a supervisor, or a node sharing placement through Redis."""
        return self.worker_index is not None or self.redis_url is not None

    @property
    def internal_url(self) -> str | None:
        """Where the other workers and nodes reach this one's internal listener."""
        port = self.internal_port
        if self.internal_url_override is not None:
            url = self.internal_url_override
            return url.replace("{port}", str(port)) if port is not None else url
        if port is None:
            return None
        return f"http://{_loopback_if_any(self.internal_host)}:{port}"

    def base_url(self) -> str:
        """Where a browser on this machine reaches the service (for printed links)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = _loopback_if_any(self.host, ipv6_any="127.0.0.1")
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
        cluster_secret = env.get_str("CLUSTER_SECRET")
        if cluster_secret is not None and len(cluster_secret) < MIN_SECRET_LENGTH:
            log.warning("CLUSTER_SECRET is shorter than %d characters", MIN_SECRET_LENGTH)
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
            seat_grace_seconds=env.get_float("SEAT_GRACE_SECONDS", 60.0, minimum=0.0),
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
            audio_first=_check_choice("AUDIO_FIRST", env.get_str("AUDIO_FIRST") or "on", ON_OFF)
            == "on",
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
            workers=env.get_int("RELAY_WORKERS", default_workers(), minimum=1, maximum=MAX_WORKERS),
            redis_url=env.get_url("REDIS_URL", schemes=("redis", "rediss", "unix")),
            drain_timeout=env.get_float("DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT, minimum=0.0),
            media_coalesce_ms=env.get_float("MEDIA_COALESCE_MS", 0.5, minimum=0.0, maximum=2.0),
            node_id=check_node_id(
                "RELAY_NODE_ID", env.get_str("RELAY_NODE_ID") or default_node_id()
            ),
            worker_index=env.get_optional_int(
                "RELAY_WORKER_INDEX", minimum=0, maximum=MAX_WORKERS - 1
            ),
            internal_host=env.get_str("RELAY_INTERNAL_HOST") or "127.0.0.1",
            internal_port=env.get_optional_int("RELAY_INTERNAL_PORT", minimum=0, maximum=65535),
            internal_url_override=env.get_url("RELAY_INTERNAL_URL", schemes=("http", "https")),
            worker_max_calls=env.get_int("RELAY_WORKER_MAX_CALLS", 60, minimum=1),
            cluster_secret=cluster_secret or derive_cluster_secret(jwt_secret),
            cluster_state_file=env.get_str("RELAY_CLUSTER_STATE_FILE"),
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

    def get_float(
        self, name: str, default: float, *, minimum: float, maximum: float | None = None
    ) -> float:
        raw = self.get_str(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not value >= minimum:  # also refuses NaN
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} must be <= {maximum}, got {value}")
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


def check_node_id(name: str, value: str) -> str:
    if not NODE_ID_PATTERN.fullmatch(value):
        raise ConfigError(
            f"{name} must be 1-{MAX_NODE_ID_LENGTH} letters, digits, '.', '_' or '-', got {value!r}"
        )
    return value


def _loopback_if_any(host: str, *, ipv6_any: str = "[::1]") -> str:
    """A URL host for `host`: a wildcard bind address becomes loopback, IPv6 in brackets."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return ipv6_any
    return f"[{host}]" if ":" in host else host


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
