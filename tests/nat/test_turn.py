"""TURN with ephemeral credentials, against a real coturn configured by deploy/coturn.

A client behind a symmetric NAT that may use only relayed candidates (iceTransportPolicy
"relay") gets its TURN credentials from `GET /api/video-calls/config` and reaches the relay
through coturn; coturn refuses expired and forged TURN REST credentials, and refuses to relay
towards the private ranges the production config denies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from calls.ice_servers import turn_rest_credentials
from storage.base import Storage
from tests.helpers import BookingFactory
from tests.nat import topology
from tests.nat.conftest import Coturn, ServeRelay
from tests.nat.procs import Endpoint
from tests.nat.turn_probe import TurnProbe
from tests.relay.helpers import open_room

pytestmark = [pytest.mark.netns, pytest.mark.media]

CLIENT = "tests.nat.client_proc"
TTL = 600


async def test_relay_only_client_joins_with_credentials_from_the_config_endpoint(
    nat_topology: topology.Topology,
    coturn: Coturn,
    serve_relay: ServeRelay,
    booking_factory: BookingFactory,
    storage: Storage,
) -> None:
    a, b = nat_topology.sites["a"], nat_topology.sites["b"]
    tcp_url = f"turn:{topology.TURN_IP}:3478?transport=tcp"
    server = await serve_relay(
        turn_secret=coturn.secret,
        turn_server_url=coturn.url,
        turn_urls=(tcp_url,),
        turn_credential_ttl=TTL,
    )
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    common = ("call", "--base-url", server.base_url, "--room", room_id)
    relayed = Endpoint(
        "relay-only", a.client_ns, CLIENT, *common, "--token", booking.client_token,
        "--source-id", "41", "--expect-source", "42", "--use-config", "--relay-only",
    )  # fmt: skip
    direct = Endpoint(
        "direct", b.client_ns, CLIENT, *common, "--token", booking.psychologist_token,
        "--source-id", "42", "--expect-source", "41",
    )  # fmt: skip
    try:
        await relayed.start()
        await direct.start()
        published = await relayed.next_event("published", 30)
        seen_by_relayed = await relayed.next_event("verified", 60)
        seen_by_direct = await direct.next_event("verified", 60)
    finally:
        await relayed.stop()
        await direct.stop()

    # the credentials came from the config endpoint: TURN REST, for this user, expiring in TTL
    (turn,) = published["iceServers"]
    assert turn["urls"] == [coturn.url, tcp_url]
    expiry, user_id = turn["username"].split(":")
    assert user_id == booking.client.id
    assert abs(int(expiry) - (time.time() + TTL)) < 30
    # the client offered only relayed candidates, on coturn, and used them
    kinds = {line.split()[7] for line in seen_by_relayed["local_candidates"]}
    assert kinds == {"relay"}, seen_by_relayed["local_candidates"]
    for pair in seen_by_relayed["pairs"].values():
        assert pair["local"]["type"] == "relay"
        assert pair["local"]["address"][0] == topology.TURN_IP
        assert pair["remote"]["address"][0] == topology.RELAY_IP
    # and media flowed both ways through it
    assert seen_by_relayed["source_id"] == 42 and seen_by_direct["source_id"] == 41
    assert len(seen_by_relayed["marks_ms"]) >= 3 and len(seen_by_direct["marks_ms"]) >= 3
    # each heard the other's tone (slot = source id % 40), and nobody else's
    assert seen_by_relayed["heard_slots"] == [42 % 40] and seen_by_direct["heard_slots"] == [
        41 % 40
    ]


async def test_coturn_refuses_expired_and_forged_credentials(coturn: Coturn) -> None:
    now = int(time.time())
    valid = turn_rest_credentials(coturn.secret, "u1", now + TTL)
    expired = turn_rest_credentials(coturn.secret, "u1", now - 60)
    forged_username = f"{now + TTL}:u1"
    forged = (
        forged_username,
        base64.b64encode(
            hmac.new(b"not-the-secret", forged_username.encode(), hashlib.sha1).digest()
        ).decode(),
    )
    extended = (f"{now + 10 * TTL}:u1", valid[1])  # a valid signature, a later expiry

    for username, password in (expired, forged, extended):
        async with TurnProbe(coturn.address, username, password) as probe:
            outcome = await probe.allocate()
        assert not outcome.success and outcome.error_code == 401, (username, outcome)

    async with TurnProbe(coturn.address, *valid) as probe:
        allocated = await probe.allocate()
        assert allocated.success and allocated.attributes is not None, allocated
        relayed_host, _ = allocated.attributes["XOR-RELAYED-ADDRESS"]
        assert relayed_host == topology.TURN_IP
        # the relay's address is allowed; private ranges (the TURN server's own network, the
        # clients' LANs, loopback, cloud metadata) are denied by the production config
        assert (await probe.create_permission(topology.RELAY_IP)).success
        for private in ("10.0.1.2", "127.0.0.1", "169.254.169.254", "192.168.1.1"):
            denied = await probe.create_permission(private)
            assert not denied.success and denied.error_code == 403, (private, denied)
        await probe.release()
