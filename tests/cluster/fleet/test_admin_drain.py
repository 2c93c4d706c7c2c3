"""`POST /api/admin/nodes/{nodeId}/drain` under the supervisor: whichever worker the request
reaches, that worker drains (it holds no call: at once), exits 0 and is started afresh, while
the other one keeps serving the public port: a graceful worker restart."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from calls.identity import mint_token
from synth.servers import RelayProcess
from tests.cluster.fleet.helpers import JWT, MakeRelay, alive, status, wait_for_rooms, worker_pids


@pytest.fixture
def relay(make_relay: MakeRelay) -> RelayProcess:
    return make_relay("admin-drain", {"RELAY_WORKERS": "2", "RELAY_UDP_PORTS": "43200-43299"})


async def test_an_admin_drains_one_worker_which_is_started_afresh(relay: RelayProcess) -> None:
    admin = mint_token("a" * 24, "admin", JWT)
    view = await wait_for_rooms(relay.url, admin, lambda v: len(v) == 2, "two workers")
    victim, other = sorted(view)
    pids = worker_pids(relay.pid)
    # the kernel picks the worker that answers: the drain is forwarded when it is the other
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{relay.url}/api/admin/nodes/{victim}/drain", headers={"x-auth-token": admin}
        ) as response,
    ):
        assert response.status == 202, await response.text()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while alive(pids[victim]) and loop.time() < deadline:
        assert await status(f"{relay.url}/healthz") == 200  # the other worker serves meanwhile
        await asyncio.sleep(0.1)
    assert not alive(pids[victim]), "the drained worker did not exit"
    assert alive(pids[other]) and worker_pids(relay.pid)[other] == pids[other]
    await wait_for_rooms(relay.url, admin, lambda v: victim in v, "the worker restarted", 20)
    assert worker_pids(relay.pid)[victim] != pids[victim]
