"""Redis stopped in the middle of a call and started again (empty, as after a crash without
persistence): the live call's media never stops, `/readyz` says the node is unready while
`/healthz` stays ok, new calls are refused clearly, and everything works again afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synth import netns
from synth.client import CallClient, SignalingError
from synth.load import LoadOptions, provision_relay
from synth.servers import RelayProcess
from tests.cluster.fleet.helpers import JWT, Call, MakeRelay, status, until_status
from tests.cluster.redis_server import RedisServer

MAX_GAP = 0.5  # seconds without a new decoded frame that would count as media stopping


@pytest.fixture
def redis(tmp_path: Path, own_netns: netns.Netns) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def relay(make_relay: MakeRelay, redis: RedisServer) -> RelayProcess:
    return make_relay(
        "outage",
        {
            "RELAY_WORKERS": "1",
            "REDIS_URL": redis.url,
            "RELAY_ALLOWED_PEER_RANGES": "10.77.0.0/24",
        },
    )


class FrameWatch:
    """Samples a receiver's decoded-frame count; records the longest time it stood still."""

    def __init__(self, call: Call) -> None:
        a, b = call.clients
        self.probes = [a.video_from(b.socket_id or ""), b.video_from(a.socket_id or "")]
        assert all(self.probes)
        self.longest_gap = 0.0
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        counts = [p.frames_received for p in self.probes if p]
        changed = [time.monotonic()] * len(counts)
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            for i, probe in enumerate(self.probes):
                assert probe is not None
                if probe.frames_received != counts[i]:
                    counts[i] = probe.frames_received
                    changed[i] = now
                self.longest_gap = max(self.longest_gap, now - changed[i])

    async def stop(self) -> float:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.longest_gap


async def test_a_redis_outage_keeps_live_calls_and_recovers(
    relay: RelayProcess, redis: RedisServer
) -> None:
    options = LoadOptions(url=relay.url, calls=3, participants=2, jwt_secret=JWT)
    live, during, after = await provision_relay(options)
    call = Call(*live, (1, 2))
    later = Call(*after, (3, 4))
    try:
        await call.join((relay.url, relay.url))
        await call.verify_media()
        await until_status(f"{relay.url}/readyz", 200, 5)
        watch = FrameWatch(call)

        redis.kill()
        await until_status(f"{relay.url}/readyz", 503, 8)
        assert await status(f"{relay.url}/healthz") == 200
        newcomer = CallClient(relay.url, during[2][0])
        await newcomer.connect()
        with pytest.raises(SignalingError) as refused:
            await newcomer.join(during[1])
        assert refused.value.code == "SERVICE_UNAVAILABLE"
        await newcomer.close()
        await call.verify_media(frames=30)  # about a second more, decoded, from each side

        redis.start()  # empty: the node announces itself and retakes its call's lease
        await until_status(f"{relay.url}/readyz", 200, 8)
        await call.verify_media(frames=15)
        gap = await watch.stop()
        assert gap < MAX_GAP, f"media stood still for {gap:.2f} s during the outage"

        await later.join((relay.url, relay.url))
        await later.verify_media()
    finally:
        await asyncio.gather(call.close(), later.close())
