"""Wires the WebSocket face into an app: registers `/ws` and closes open sockets at shutdown.

Called once by the composition root (`smiling_relay.app.create_app`) with the objects the
connections use; the relay's lifetime is the composition root's, not ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from calls.service import CallService
from relay.sfu import Relay
from signaling.connection import NO_OBSERVER, SignalingConnection, SignalingObserver
from signaling.protocol import MAX_MESSAGE_BYTES

HEARTBEAT_SECONDS = 10.0  # a silent client is dropped after about this long without a pong


@dataclass
class Signaling:
    """What the `/ws` handler reads from its app (at SIGNALING_KEY)."""

    service: CallService
    # The relay exists only while the app runs (the composition root's cleanup context).
    relay: Callable[[], Relay]
    observer: SignalingObserver = NO_OBSERVER
    # The live sockets, closed with "going away" at shutdown.
    sockets: set[web.WebSocketResponse] = field(default_factory=set)


SIGNALING_KEY: web.AppKey[Signaling] = web.AppKey("signaling")


def setup_signaling(
    app: web.Application,
    *,
    service: CallService,
    relay: Callable[[], Relay],
    observer: SignalingObserver = NO_OBSERVER,
) -> None:
    """Register `/ws`; `relay()` gives the running relay when a client connects."""
    app[SIGNALING_KEY] = Signaling(service, relay, observer)
    app.router.add_get("/ws", websocket_handler, name="signaling")
    app.on_shutdown.append(close_connections)


async def close_connections(app: web.Application) -> None:
    for ws in list(app[SIGNALING_KEY].sockets):
        await ws.close(code=1001, message=b"server shutting down")


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    signaling = request.app[SIGNALING_KEY]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    signaling.sockets.add(ws)
    try:
        connection = SignalingConnection(
            request, ws, signaling.relay(), signaling.service, signaling.observer
        )
        await connection.run(request.query.get("token"))
    finally:
        signaling.sockets.discard(ws)
    return ws
