"""The `/ws` endpoint and the relay's lifetime inside the aiohttp app."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from relay.settings import RelaySettings
from relay.sfu import Relay
from signaling.connection import SignalingConnection
from signaling.protocol import MAX_MESSAGE_BYTES
from smiling_relay.appkeys import CONFIG_KEY, RELAY_KEY
from smiling_relay.config import Config

HEARTBEAT_SECONDS = 10.0  # a silent client is dropped after about this long without a pong


class OpenSockets:
    """The app's live signaling sockets, closed with "going away" at shutdown."""

    def __init__(self) -> None:
        self.sockets: set[web.WebSocketResponse] = set()


CONNECTIONS_KEY: web.AppKey[OpenSockets] = web.AppKey("signaling_connections")


def setup_signaling(app: web.Application) -> None:
    """Register `/ws` and a cleanup context that owns the Relay (stored at RELAY_KEY)."""
    app[CONNECTIONS_KEY] = OpenSockets()
    app.router.add_get("/ws", websocket_handler, name="signaling")
    app.cleanup_ctx.append(relay_context)
    app.on_shutdown.append(close_connections)


def relay_settings(config: Config) -> RelaySettings:
    return RelaySettings(
        max_participants=config.room_max_participants,
        announced_ip=config.relay_announced_ip,
        bind_ips=config.relay_bind_ips,
        udp_ports=config.relay_udp_ports,
    )


async def relay_context(app: web.Application) -> AsyncIterator[None]:
    relay = Relay(relay_settings(app[CONFIG_KEY]))
    app[RELAY_KEY] = relay
    yield
    await relay.close()


async def close_connections(app: web.Application) -> None:
    for ws in list(app[CONNECTIONS_KEY].sockets):
        await ws.close(code=1001, message=b"server shutting down")


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    connections = request.app[CONNECTIONS_KEY].sockets
    connections.add(ws)
    try:
        await SignalingConnection(request, ws, request.app[RELAY_KEY]).run(
            request.query.get("token")
        )
    finally:
        connections.discard(ws)
    return ws
