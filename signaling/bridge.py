"""A client's signaling carried to the node that holds its call.

Each call lives whole on one node (docs/scaling.md). A participant whose WebSocket reached
another node (the kernel spreads connections over a machine's workers; a load balancer spreads
them over machines) is bridged: this node opens a WebSocket to the holder's internal listener,
authenticates there with the participant's own token (the holder checks it again and runs the
call's rules), and from then on copies text frames both ways, unparsed. The client cannot tell,
except by one extra hop of latency on signaling; media goes straight to the holder's UDP ports.

The internal listener accepts bridges only with the fleet's shared secret (`CLUSTER_SECRET`);
the client's address, user agent and socket id travel in headers so that audit and the room's
view of the participant are the same as for a direct connection.
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

import aiohttp

from calls.errors import CallError, unavailable

log = logging.getLogger(__name__)

INTERNAL_WS_PATH = "/internal/ws"
SECRET_HEADER = "Authorization"
SOCKET_ID_HEADER = "X-Relay-Socket-Id"
CLIENT_IP_HEADER = "X-Relay-Client-IP"
# Set ("1") when the entry node let the client in over its connection budget: the holder lets
# it rejoin only a seat the user holds there (docs/signaling.md, "Limits").
SEAT_ONLY_HEADER = "X-Relay-Seat-Only"
HANDSHAKE_TIMEOUT = 5.0
# What the client is told when the holder went away without closing (a crash): 1012 "service
# restart", which the browser client answers by reconnecting (and the call is placed again).
CLOSE_HOLDER_LOST = 1012


class CallLocator(Protocol):
    """Placement, as signaling sees it (the composition root adapts `cluster`)."""

    async def locate(self, room_id: str, *, unreachable: str | None = None) -> str | None:
        """None: the call is on this node; else the internal URL of the node holding it.
        `unreachable`: a URL it gave that could not be reached just now. Raises `CallError`
        (UNAVAILABLE) when the call cannot be placed now."""
        ...


class BridgeRefused(Exception):
    """The holder refused the bridged participant: `event` is its `error` event to pass on."""

    def __init__(self, event: str, close_code: int) -> None:
        super().__init__(event)
        self.event = event
        self.close_code = close_code


def refusal_close_code(event: str) -> int:
    """The close code that goes with the holder's refusal (docs/signaling.md, close codes)."""
    code = json.loads(event).get("data", {}).get("code")
    return 4401 if code == "AUTHENTICATION_FAILED" else 4429


def unreachable(node_url: str) -> CallError:
    return unavailable("the server holding this call cannot be reached right now; try again", 2)


class Bridge:
    """One bridged client connection: the WebSocket to the call's node."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def open(
        cls,
        http: aiohttp.ClientSession,
        node_url: str,
        *,
        secret: str,
        token: str,
        socket_id: str,
        client_ip: str | None,
        user_agent: str | None,
        join: str,
        max_msg_size: int,
        seat_only: bool = False,
    ) -> Bridge:
        """Connect, authenticate as the client and send its `join-room` (the text as received).

        Raises `BridgeRefused` when the holder refuses the token, `CallError` when it cannot be
        reached."""
        headers = {SECRET_HEADER: f"Bearer {secret}", SOCKET_ID_HEADER: socket_id}
        if client_ip:
            headers[CLIENT_IP_HEADER] = client_ip
        if seat_only:
            headers[SEAT_ONLY_HEADER] = "1"
        if user_agent:
            headers["User-Agent"] = user_agent
        try:
            ws = await http.ws_connect(
                node_url.rstrip("/") + INTERNAL_WS_PATH,
                headers=headers,
                heartbeat=10.0,
                max_msg_size=max_msg_size,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("bridge to %s failed: %s", node_url, exc)
            raise unreachable(node_url) from None
        try:
            await ws.send_json({"event": "authenticate", "data": {"token": token}})
            first = await ws.receive(timeout=HANDSHAKE_TIMEOUT)
            if first.type != aiohttp.WSMsgType.TEXT:
                raise unreachable(node_url)
            if json.loads(first.data).get("event") != "authenticated":
                await ws.close()
                raise BridgeRefused(first.data, refusal_close_code(first.data))
            await ws.send_str(join)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("bridge to %s failed during the handshake: %r", node_url, exc)
            await ws.close()
            raise unreachable(node_url) from None
        except BaseException:
            await ws.close()
            raise
        return cls(ws)

    async def send(self, text: str) -> None:
        if not self.ws.closed:
            await self.ws.send_str(text)

    async def receive(self) -> str | None:
        """The holder's next text frame; None once it closed (see `close_code`)."""
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                return str(message.data)
        return None

    @property
    def close_code(self) -> int:
        """What to close the client with after the holder closed: its code, or 1012."""
        code = self.ws.close_code
        return CLOSE_HOLDER_LOST if code in (None, 1006, 1011, 1001) else code

    async def close(self) -> None:
        await self.ws.close()
