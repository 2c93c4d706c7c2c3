"""Wires the WebSocket face into an app: registers `/ws` and closes open sockets at shutdown.

Called once by the composition root (`smiling_relay.app.create_app`) with the objects the
connections use; the relay's lifetime is the composition root's, not ours.
"""

from __future__ import annotations

import contextlib
import hmac
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from calls.service import CallService
from relay.sfu import Relay
from signaling.bridge import (
    CLIENT_IP_HEADER,
    INTERNAL_WS_PATH,
    SEAT_ONLY_HEADER,
    SECRET_HEADER,
    SOCKET_ID_HEADER,
)
from signaling.connection import (
    AUTHENTICATE_TIMEOUT,
    NO_OBSERVER,
    Bridged,
    Fleet,
    SignalingConnection,
    SignalingObserver,
)
from signaling.limits import NO_PLACE, Occupancy, SignalingLimits
from signaling.origins import OriginPolicy
from signaling.protocol import MAX_MESSAGE_BYTES


@dataclass
class Signaling:
    """What the `/ws` handler reads from its app (at SIGNALING_KEY)."""

    service: CallService
    # The relay exists only while the app runs (the composition root's cleanup context).
    relay: Callable[[], Relay]
    observer: SignalingObserver = NO_OBSERVER
    limits: SignalingLimits = field(default_factory=SignalingLimits)
    origins: OriginPolicy = field(default_factory=OriginPolicy)
    # Set when calls live on several nodes: placement, and bridges to the call's node.
    fleet: Fleet | None = None
    # The live sockets, closed with "going away" at shutdown.
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    # Unauthenticated connections per client IP, authenticated ones per user.
    pending: Occupancy = field(init=False)
    sessions: Occupancy = field(init=False)

    def __post_init__(self) -> None:
        self.pending = Occupancy(self.limits.max_pending_per_ip)
        self.sessions = Occupancy(self.limits.max_sessions_per_user)


SIGNALING_KEY: web.AppKey[Signaling] = web.AppKey("signaling")


def setup_signaling(
    app: web.Application,
    *,
    service: CallService,
    relay: Callable[[], Relay],
    observer: SignalingObserver = NO_OBSERVER,
    limits: SignalingLimits | None = None,
    origins: OriginPolicy | None = None,
    fleet: Fleet | None = None,
) -> None:
    """Register `/ws` (and, with a `fleet`, the bridges' `/internal/ws`); `relay()` gives the
    running relay when a client connects."""
    app[SIGNALING_KEY] = Signaling(
        service, relay, observer, limits or SignalingLimits(), origins or OriginPolicy(), fleet
    )
    app.router.add_get("/ws", websocket_handler, name="signaling")
    if fleet is not None and fleet.secret is not None:
        app.router.add_get(INTERNAL_WS_PATH, bridged_handler, name="signaling-bridged")
    app.on_shutdown.append(close_connections)


async def close_connections(app: web.Application) -> None:
    for ws in list(app[SIGNALING_KEY].sockets):
        await ws.close(code=1001, message=b"server shutting down")


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    signaling = request.app[SIGNALING_KEY]
    # Refused before the upgrade, so the answer is the REST error envelope (api.errors).
    refusal = signaling.origins.refusal(request.headers.get("Origin"), request.host)
    if refusal is not None:
        raise web.HTTPForbidden(reason=f"WebSocket refused: {refusal}")
    token = request.query.get("token")
    # Only a connection that authenticates with a message waits (up to 10 s) unauthenticated;
    # one with `?token=` is authenticated or closed as soon as it is upgraded.
    pending = signaling.pending.take(request.remote or "") if token is None else NO_PLACE
    if pending is None:
        raise web.HTTPTooManyRequests(
            reason=(
                f"at most {signaling.limits.max_pending_per_ip} unauthenticated WebSocket "
                "connections per address"
            ),
            headers={"Retry-After": str(int(AUTHENTICATE_TIMEOUT))},
        )
    try:
        return await _serve(request, signaling, token, on_authenticated=pending.release)
    finally:
        pending.release()


async def bridged_handler(request: web.Request) -> web.WebSocketResponse:
    """A client connection bridged here by the node its WebSocket reached (signaling.bridge).

    Only the fleet's secret opens it; the client was checked there (origin, connection rate
    limit) and authenticates here again with its own token."""
    signaling = request.app[SIGNALING_KEY]
    assert signaling.fleet is not None and signaling.fleet.secret is not None
    shown = request.headers.get(SECRET_HEADER, "").removeprefix("Bearer ")
    if not hmac.compare_digest(shown.encode(), signaling.fleet.secret.encode()):
        raise web.HTTPForbidden(reason="bridged connections need the fleet's secret")
    socket_id = request.headers.get(SOCKET_ID_HEADER, "")
    if not socket_id.isalnum() or len(socket_id) > 64:
        raise web.HTTPBadRequest(reason=f"{SOCKET_ID_HEADER} must be alphanumeric")
    seat_only = request.headers.get(SEAT_ONLY_HEADER) == "1"
    bridged = Bridged(socket_id, request.headers.get(CLIENT_IP_HEADER), seat_only)
    return await _serve(request, signaling, None, bridged=bridged)


# Linux's TCP_THIN_LINEAR_TIMEOUTS (not in Python's socket module): a thin stream (few
# segments in flight) retransmits at a steady RTO instead of doubling it at each loss.
TCP_THIN_LINEAR_TIMEOUTS = 16


def thin_stream(request: web.Request) -> None:
    """Mark the socket a thin stream. Signaling is one: a few small messages at a time. On a
    weak link the segments lost while video flooded it back TCP's retransmission timer off to
    seconds, and an event such as `video-paused`, the one that relieves the link, then waits
    that long after the link is free; linear timeouts resend it within a few hundred ms."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # not Linux, or a kernel without it: nothing lost
        sock.setsockopt(socket.IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, 1)


async def _serve(
    request: web.Request,
    signaling: Signaling,
    token: str | None,
    *,
    on_authenticated: Callable[[], None] = lambda: None,
    bridged: Bridged | None = None,
) -> web.WebSocketResponse:
    # No aiohttp heartbeat and no autoping: the connection's keep-alive sees every frame (pongs
    # included) and judges a silent socket by its media too (signaling/liveness.py).
    ws = web.WebSocketResponse(autoping=False, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    thin_stream(request)
    signaling.sockets.add(ws)
    try:
        connection = SignalingConnection(
            request,
            ws,
            signaling.relay(),
            signaling.service,
            signaling.observer,
            limits=signaling.limits,
            sessions=signaling.sessions,
            on_authenticated=on_authenticated,
            fleet=signaling.fleet,
            bridged=bridged,
        )
        await connection.run(token)
    finally:
        signaling.sockets.discard(ws)
    return ws
