"""What the fleet tests share: calls of aiortc participants whose media is checked, the
fleet's view through the admin API, worker processes by node id."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from synth.client import CallClient, SignalingError
from synth.servers import RelayProcess
from tests.relay.helpers import hears, join_and_publish, sees

JWT = secrets.token_urlsafe(32)  # the secret of every relay these tests start
MakeRelay = Callable[[str, dict[str, str]], RelayProcess]  # the `make_relay` fixture

# web/js/call.js RECONNECT_BACKOFF_MS, in seconds
BROWSER_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class Call:
    """A two-party call: participant i publishes source id `sources[i]`."""

    session_id: str
    room: str
    tokens: list[str]
    sources: tuple[int, int]
    clients: list[CallClient] = field(default_factory=list)

    async def start(self, url: str) -> None:
        """`POST /api/video-calls/start/{id}`, as the browser client does before it joins: the
        call is In Progress from then on."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/api/video-calls/start/{self.session_id}",
                headers={"x-auth-token": self.tokens[0]},
            ) as response,
        ):
            assert response.status == 200, await response.text()

    async def join(self, urls: tuple[str, str]) -> None:
        """Both participants join (through `urls[i]`) and publish."""
        self.clients = [
            CallClient(url, token) for url, token in zip(urls, self.tokens, strict=True)
        ]
        for client, source in zip(self.clients, self.sources, strict=True):
            await client.connect()
            await join_and_publish(client, self.room, source)

    async def rejoin(self, urls: tuple[str, str], give_up_after: float = 20.0) -> None:
        """Join again as the browser client reconnects: after 0.5, 1, 2, 4 s… while the answer
        is SERVICE_UNAVAILABLE (the call's worker just died and is not yet known dead)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_after
        for backoff in BROWSER_BACKOFF:
            await asyncio.sleep(backoff)
            await self.close()
            try:
                await self.join(urls)
                return
            except SignalingError as exc:
                if exc.code != "SERVICE_UNAVAILABLE" or loop.time() > deadline:
                    raise
        raise AssertionError(f"{self.room}: no rejoin within {give_up_after} s")

    async def verify_pictures(self, frames: int = 10) -> None:
        """Each decodes the other's pictures."""
        a, b = self.clients
        await asyncio.gather(
            sees(a, b, self.sources[1], frames), sees(b, a, self.sources[0], frames)
        )

    async def verify_media(self, frames: int = 10) -> None:
        """Each decodes the other's pictures and hears the other's tone (three timing marks
        and the tone's windows after the pictures: seen to take up to 3 s more)."""
        await self.verify_pictures(frames)
        a, b = self.clients
        await asyncio.gather(hears(a, b, self.sources[1]), hears(b, a, self.sources[0]))

    async def close(self) -> None:
        """Hang up as the browser client does (`leave-room`: the seat is not held for a
        reconnect), then close; a participant whose socket is gone just closes."""

        async def hang_up(client: CallClient) -> None:
            if client.closed_code is None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.leave(), 5)
            await client.close()

        await asyncio.gather(*(hang_up(c) for c in self.clients), return_exceptions=True)
        self.clients = []


async def status(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status


async def until_status(url: str, wanted: int, timeout: float) -> None:  # noqa: ASYNC109
    """Poll `url` (bounded) until it answers `wanted`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (seen := await status(url)) != wanted:
        if loop.time() > deadline:
            raise AssertionError(f"{url} answered {seen}, not {wanted}, for {timeout} s")
        await asyncio.sleep(0.1)


async def admin_get(url: str, path: str, admin: str) -> dict:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}{path}", headers={"x-auth-token": admin}) as response,
    ):
        body = await response.json()
        assert response.status == 200, body
    return dict(body["data"])


async def rooms_by_node(url: str, admin: str) -> dict[str, list[str]]:
    """The calls each live node holds, as the fleet's heartbeats say."""
    nodes = (await admin_get(url, "/api/admin/nodes", admin))["nodes"]
    return {node["nodeId"]: sorted(node["rooms"]) for node in nodes}


async def wait_for_rooms(
    url: str,
    admin: str,
    predicate: Callable[[dict[str, list[str]]], bool],
    what: str,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> dict[str, list[str]]:
    """Poll the fleet's view (heartbeats come every second) until `predicate(view)`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    view: dict[str, list[str]] = {}
    while loop.time() < deadline:
        view = await rooms_by_node(url, admin)
        if predicate(view):
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: the fleet says {view}")


def worker_pids(supervisor_pid: int) -> dict[str, int]:
    """The supervisor's worker processes, by their RELAY_NODE_ID."""
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()
    pids: dict[str, int] = {}
    for pid in map(int, children):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"RELAY_NODE_ID="):
                pids[entry.split(b"=", 1)[1].decode()] = pid
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
