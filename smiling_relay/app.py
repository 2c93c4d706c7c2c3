"""The aiohttp application factory: the composition root of the service.

`create_app` is the only module that imports every layer. It builds the objects from `Config`
(the call service, the rate limiters, the relay's settings, the metrics), hands each face what it
needs through the face's own setup function (which sets that face's app keys), and owns the
lifetimes in `cleanup_ctx`, in this order: storage → metrics' writes → relay → metrics (so the
relay exists when metrics starts and stops after it, the summaries of the calls the relay closes
last are still awaited, and storage outlives them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
from aiohttp import web

from api.errors import NOT_FOUND, ApiError
from api.setup import setup_api
from calls.ice_servers import IceSettings
from calls.ratelimit import RateLimit, RateLimiter
from calls.service import CallService
from cluster.node import NodeAgent
from cluster.ratelimit import SharedRateLimiter
from cluster.state import ClusterState
from metrics.setup import Metrics, setup_metrics
from relay.candidates import PeerPolicy, parse_ranges
from relay.settings import RelaySettings
from relay.sfu import Relay
from signaling.connection import Fleet
from signaling.limits import SignalingLimits
from signaling.origins import OriginPolicy
from signaling.protocol import CLIENT_EVENTS, SERVER_EVENTS
from signaling.setup import setup_signaling
from smiling_relay.config import Config
from smiling_relay.fleet import Locator, NodeFleet, internal_routes, occupied_rooms, open_state
from storage.base import Storage
from storage.factory import open_storage

log = logging.getLogger(__name__)

# `web/` sits next to the packages, in a checkout and in an installed copy alike.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
RETENTION_INTERVAL = 3600.0  # seconds between retention passes
STALE_CALL_INTERVAL = 60.0  # seconds between checks for calls to end (CALL_IDLE_END_MINUTES)
MAX_BODY_BYTES = 256 * 1024

# The running relay (set by its cleanup context; the faces get it through `create_app`).
RELAY_KEY: web.AppKey[Relay] = web.AppKey("relay")
# What the server awaits on SIGTERM after it stopped accepting connections: the drain (no new
# calls here, the calls in progress continue until they end or DRAIN_TIMEOUT passes).
DRAIN_KEY: web.AppKey[Callable[[], Awaitable[None]]] = web.AppKey("drain")
# This node in the fleet (placement, drain, readiness); the server sets its `stop`.
FLEET_KEY: web.AppKey[NodeFleet] = web.AppKey("fleet")
# The client session bridges and node-internal RPCs use (made at start-up).
HTTP_KEY: web.AppKey[aiohttp.ClientSession] = web.AppKey("http")


def relay_settings(config: Config) -> RelaySettings:
    return RelaySettings(
        max_participants=config.room_max_participants,
        seat_grace=config.seat_grace_seconds,
        announced_ip=config.relay_announced_ip,
        bind_ips=config.relay_bind_ips,
        udp_ports=config.relay_udp_ports,
        peer_policy=PeerPolicy(parse_ranges(config.relay_allowed_peer_ranges)),
        audio_first=config.audio_first,
    )


def signaling_limits(config: Config) -> SignalingLimits:
    return SignalingLimits(
        max_pending_per_ip=config.ws_max_pending_per_ip,
        max_sessions_per_user=config.ws_max_connections_per_user,
        messages_per_second=config.ws_messages_per_second,
        message_burst=config.ws_message_burst,
    )


def ice_settings(config: Config) -> IceSettings:
    return IceSettings(
        stun_server_url=config.stun_server_url,
        turn_server_url=config.turn_server_url,
        turn_urls=config.turn_urls,
        turn_username=config.turn_username,
        turn_password=config.turn_password,
        turn_secret=config.turn_secret,
        turn_credential_ttl=config.turn_credential_ttl,
    )


def create_app(
    config: Config, storage: Storage | None = None, *, web_dir: Path | None = None
) -> web.Application:
    """Build the application.

    `storage` defaults to the configured backend, opened and closed with the app. A storage
    passed in belongs to the caller: the app initializes it (idempotent) but does not close it.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    store = storage if storage is not None else open_storage(config)

    def epoch() -> float:
        return config.clock().timestamp()

    state = open_state(config.redis_url, config.cluster_state_file)
    service = CallService(
        store,
        secret=config.jwt_secret,
        clock=config.clock,
        ice=ice_settings(config),
        ws_limiter=_rate_limit(config, state, config.rate_limit_ws_per_min, "ws", epoch),
    )
    agent = NodeAgent(
        state,
        node_id=config.node_id,
        internal_url=config.internal_url or "",
        capacity=config.worker_max_calls,
        rooms=lambda: occupied_rooms(app[RELAY_KEY]) if RELAY_KEY in app else [],
        streams=lambda: app[RELAY_KEY].active_tracks() if RELAY_KEY in app else 0,
        on_beat=lambda reachable, draining: metrics.set_node_state(
            placement_up=reachable, draining=draining
        ),
    )
    fleet = NodeFleet(
        agent,
        state,
        relay=lambda: app[RELAY_KEY],
        service=service,
        secret=config.cluster_secret,
        http=lambda: app[HTTP_KEY],
        drain_timeout=config.drain_timeout,
    )
    app[FLEET_KEY] = fleet
    app[DRAIN_KEY] = fleet.drain_here
    metrics = Metrics(
        relay=lambda: app.get(RELAY_KEY),
        store=lambda: store,
        max_calls=config.metrics_max_calls,
        sample_interval=config.metrics_sample_interval,
        auth_token=config.metrics_auth_token,
        ws_events_in=CLIENT_EVENTS,
        ws_events_out=SERVER_EVENTS,
        node=config.node_id,
        # Another node's call whose checkpoints stopped is cut short (docs/metrics.md).
        live_nodes=fleet.live_nodes if config.clustered else None,
    )

    setup_api(
        app,
        service=service,
        storage=store,
        rate_limiter=_rate_limit(config, state, config.rate_limit_api_per_min, "api", epoch),
        quality=metrics,
        cors_origins=config.cors_origins,
        hsts=config.is_production,
        e2ee=config.e2ee,
        body_timeout=config.http_body_timeout,
        rating_observer=metrics,
        fleet=fleet,
    )
    setup_signaling(
        app,
        service=service,
        relay=lambda: app[RELAY_KEY],
        observer=metrics,
        limits=signaling_limits(config),
        origins=OriginPolicy.of(config.cors_origins, config.public_url),
        # One process bridges nothing; placement still refuses new calls while it drains.
        fleet=Fleet(
            Locator(agent),
            config.cluster_secret if config.clustered else None,
            lambda: app[HTTP_KEY],
        ),
    )
    if config.clustered:
        internal_routes(app, lambda: fleet, lambda: app[RELAY_KEY], config.cluster_secret)
    setup_metrics(app, metrics)
    # An ended call ends in the relay too (here or on its node): its participants are told.
    service.on_call_ended(fleet.call_ended)
    _setup_web_client(app, web_dir or WEB_DIR)

    # Started in this order, stopped in reverse: the relay's teardown may still write to
    # storage, metrics subscribes to the relay's call ends and summarises what is left at
    # stop, and its pending writes are awaited after the relay has closed the rest.
    app.cleanup_ctx.append(_storage_lifetime(store, owned=storage is None))
    app.cleanup_ctx.append(metrics.writes)
    app.cleanup_ctx.append(_relay_lifetime(relay_settings(config)))
    app.cleanup_ctx.append(_node_lifetime(agent))
    app.cleanup_ctx.append(metrics.context)
    idle = config.call_idle_end_minutes
    app.cleanup_ctx.append(
        _stale_calls_lifetime(service, fleet, timedelta(minutes=idle) if idle > 0 else None)
    )
    return app


def _rate_limit(
    config: Config, state: ClusterState, limit: int, scope: str, clock: Callable[[], float]
) -> RateLimit:
    """Per-user limits hold across every worker and node: counted in the shared state when
    there is one (each process's own counters while it cannot be reached)."""
    if config.clustered:
        return SharedRateLimiter(state, limit, scope=scope, clock=clock)
    return RateLimiter(limit, clock=clock)


def _storage_lifetime(
    storage: Storage, *, owned: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await storage.initialize()
        log.info("storage ready (%s)", storage.backend)
        # The retention rules (six months of audit) hold for a process that runs for months.
        async with _every(lambda: RETENTION_INTERVAL, _prune(storage), "the retention job"):
            yield
        if owned:
            await storage.close()

    return lifetime


def _prune(storage: Storage) -> Callable[[], Awaitable[None]]:
    async def prune() -> None:
        pruned = await storage.prune_expired()
        if pruned:
            log.info("retention: %d expired records deleted", pruned)

    return prune


@contextlib.asynccontextmanager
async def _every(
    interval: Callable[[], float], job: Callable[[], Awaitable[None]], what: str
) -> AsyncIterator[None]:
    """Run `job` every `interval()` seconds while the block runs; a failure is logged and the
    job runs again next time (the interval is read each time, so tests can shorten it)."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval())
            try:
                await job()
            except Exception:
                log.exception("%s failed; it runs again in %.0f s", what, interval())

    task = asyncio.create_task(loop(), name=what)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _relay_lifetime(settings: RelaySettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        relay = Relay(settings)  # needs the running loop: built at start-up, not in create_app
        app[RELAY_KEY] = relay
        yield
        await relay.close()

    return lifetime


def _node_lifetime(agent: NodeAgent) -> Callable[[web.Application], AsyncIterator[None]]:
    """This node in the fleet while the app runs: heartbeats and leases, and the HTTP client
    that bridges and internal RPCs use."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as http:
            app[HTTP_KEY] = http
            try:
                async with agent.running():
                    yield
            finally:
                await agent.state.close()

    return lifetime


def _stale_calls_lifetime(
    service: CallService, fleet: NodeFleet, idle_after: timedelta | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Nothing else ends a call whose participants just closed their tabs: every minute, the
    service ends calls whose room stayed empty `idle_after` on every node, or past their
    window (skipped while placement cannot say which calls are occupied elsewhere)."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        async def end_stale_calls() -> None:
            occupied = await fleet.fleet_occupancy()
            if occupied is not None:
                await service.end_stale_calls(occupied, idle_after=idle_after)

        async with _every(lambda: STALE_CALL_INTERVAL, end_stale_calls, "the stale-call check"):
            yield

    return lifetime


def _setup_web_client(app: web.Application, web_dir: Path) -> None:
    """`/` and `/call/{sessionId}` serve the browser client; `/static/` its assets."""
    index = web_dir / "index.html"

    async def serve_index(request: web.Request) -> web.StreamResponse:
        if not index.is_file():
            raise ApiError(404, NOT_FOUND, "The browser client is not installed (web/index.html)")
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", serve_index)
    app.router.add_get("/call/{sessionId}", serve_index)
    if web_dir.is_dir():
        app.router.add_static("/static/", web_dir, follow_symlinks=False)
    else:
        log.warning("no browser client at %s; /static/ is not served", web_dir)
