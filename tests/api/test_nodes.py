"""`/readyz` (readiness, apart from liveness) and the fleet's nodes in the admin API, on the
real app of one process (its in-memory placement)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient

from cluster.state import StateUnavailable
from smiling_relay.app import FLEET_KEY
from tests.helpers import TokenFactory, auth_headers, data_of, error_of

Client = TestClient[web.Request, web.Application]


async def test_ready_until_it_drains_while_healthz_stays_ok(client: Client) -> None:
    ready = await data_of(await client.get("/readyz"))
    assert ready["draining"] is False and ready["placement"] == "ok"
    fleet = client.app[FLEET_KEY]
    fleet.start_drain()
    await fleet.agent.beat()
    error = await error_of(await client.get("/readyz"), 503)
    assert error["code"] == "SERVICE_UNAVAILABLE" and error["details"]["draining"] is True
    await data_of(await client.get("/healthz"))  # alive: an orchestrator must not restart it
    await fleet.start_drain()  # nothing held here: the drain is over at once


async def test_unready_while_placement_is_unreachable(client: Client) -> None:
    fleet = client.app[FLEET_KEY]

    async def down(*args: object, **kwargs: object) -> None:
        raise StateUnavailable("down")

    fleet.state.heartbeat = down  # type: ignore[method-assign]
    fleet.agent._last_beat = None  # the last good beat is past (its ttl is seconds)
    await fleet.agent.beat()
    error = await error_of(await client.get("/readyz"), 503)
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert error["details"]["placement"] == "unreachable"
    await data_of(await client.get("/healthz"))


async def test_nodes_are_listed_for_admins_only(
    client: Client, admin_token: str, make_token: TokenFactory
) -> None:
    nodes = (
        await data_of(await client.get("/api/admin/nodes", headers=auth_headers(admin_token)))
    )["nodes"]
    fleet = client.app[FLEET_KEY]
    assert [n["nodeId"] for n in nodes] == [fleet.agent.node_id]
    assert {"calls", "streams", "capacity", "draining", "rooms"} <= nodes[0].keys()
    client_token = make_token("c" * 24, "client")
    await error_of(await client.get("/api/admin/nodes", headers=auth_headers(client_token)), 403)
    await error_of(await client.get("/api/admin/nodes"), 401)


async def test_drain_a_node_by_id(client: Client, admin_token: str) -> None:
    fleet = client.app[FLEET_KEY]
    unknown = await client.post("/api/admin/nodes/nope/drain", headers=auth_headers(admin_token))
    assert (await error_of(unknown, 404))["code"] == "NOT_FOUND"
    bad = await client.post("/api/admin/nodes/a%20b/drain", headers=auth_headers(admin_token))
    await error_of(bad, 404)
    assert fleet.agent.draining is False  # a refused request changes nothing
    resp = await client.post(
        f"/api/admin/nodes/{fleet.agent.node_id}/drain", headers=auth_headers(admin_token)
    )
    assert (await data_of(resp, 202))["draining"] is True
    assert fleet.agent.draining is True
    await error_of(await client.get("/readyz"), 503)
    await fleet.start_drain()


async def test_the_nodes_list_is_a_503_while_placement_is_unreachable(
    client: Client, admin_token: str
) -> None:
    fleet = client.app[FLEET_KEY]

    async def down() -> None:
        raise StateUnavailable("down")

    fleet.state.nodes = down  # type: ignore[assignment,method-assign]
    for resp in (
        await client.get("/api/admin/nodes", headers=auth_headers(admin_token)),
        await client.post("/api/admin/nodes/other/drain", headers=auth_headers(admin_token)),
    ):
        error = await error_of(resp, 503)
        assert error["code"] == "SERVICE_UNAVAILABLE" and error["details"]["retryAfter"] == 5
