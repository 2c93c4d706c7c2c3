"""Two `smiling-relay serve` nodes in two namespaces sharing one real Redis (and one database
file): a participant whose WebSocket lands on the node that does not hold the call is bridged
there and gets media both ways (decoded pictures and tones identify the sender)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from calls.identity import mint_token
from synth import netns
from synth.client import CallClient
from synth.load import LoadOptions, provision_relay
from synth.servers import RelayProcess, free_port
from tests.cluster.fleet.topology import PEER_RANGES, NodeSite, two_node_sites
from tests.cluster.redis_server import RedisServer
from tests.relay.helpers import hears, join_and_publish, sees


@pytest.fixture
def sites(own_netns: netns.Netns) -> Iterator[list[NodeSite]]:
    with two_node_sites() as sites:
        yield sites


@pytest.fixture
def redis(tmp_path: Path, own_netns: netns.Netns) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", host="0.0.0.0")  # reached from both namespaces
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_node(
    site: NodeSite, workdir: Path, secret: str, redis: RedisServer, db: Path
) -> RelayProcess:
    internal = free_port()
    return RelayProcess(
        workdir,
        site.name,
        jwt_secret=secret,
        url_host=site.address,  # bound on 0.0.0.0 inside the node's namespace
        prefix=["ip", "netns", "exec", site.namespace],
        env={
            "RELAY_WORKERS": "1",
            "REDIS_URL": f"redis://{site.gateway}:{redis.port}/0",
            "RELAY_NODE_ID": site.name,
            "RELAY_INTERNAL_HOST": site.address,
            "RELAY_INTERNAL_PORT": str(internal),
            "SQLITE_PATH": str(db),
            "RELAY_ALLOWED_PEER_RANGES": PEER_RANGES,
            "RELAY_BIND_IPS": site.address,
        },
    )


async def fleet(url: str, admin: str) -> dict[str, int]:
    """Calls per node, as the fleet's heartbeats say."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/api/admin/nodes", headers={"x-auth-token": admin}) as response,
    ):
        body = await response.json()
    return {node["nodeId"]: node["calls"] for node in body["data"]["nodes"]}


async def fleet_becomes(url: str, admin: str, expected: dict[str, int]) -> None:
    """Heartbeats come every second: wait (bounded) until they say `expected`."""
    seen: dict[str, int] = {}
    for _ in range(50):
        seen = await fleet(url, admin)
        if seen == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the fleet says {seen}, expected {expected}")


async def test_a_participant_on_the_other_node_is_bridged_and_gets_media(
    sites: list[NodeSite], redis: RedisServer, tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(32)
    db = tmp_path / "fleet.sqlite3"
    a = start_node(sites[0], tmp_path, secret, redis, db)
    b = start_node(sites[1], tmp_path, secret, redis, db)
    try:
        admin = mint_token("a" * 24, "admin", secret)
        options = LoadOptions(url=a.url, calls=1, participants=2, jwt_secret=secret)
        [(_session, room, tokens)] = await provision_relay(options)
        first = CallClient(a.url, tokens[0])
        second = CallClient(b.url, tokens[1])  # reaches node-b; the call is on node-a
        try:
            await first.connect()
            await join_and_publish(first, room, 1)
            await fleet_becomes(a.url, admin, {"node-a": 1, "node-b": 0})
            await second.connect()
            await join_and_publish(second, room, 2)
            await sees(first, second, 2)
            await sees(second, first, 1)
            await hears(first, second, 2)
            await hears(second, first, 1)
            # still one call, on node-a: node-b only carries the second one's signaling
            await fleet_becomes(b.url, admin, {"node-a": 1, "node-b": 0})
        finally:
            await asyncio.gather(first.close(), second.close())
    finally:
        a.stop()
        b.stop()
