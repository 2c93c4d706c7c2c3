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
import subprocess
import sys
import time

import pytest

from calls.ice_servers import turn_rest_credentials
from storage.base import Storage
from tests.helpers import BookingFactory
from tests.nat import topology
from tests.nat.conftest import TURN_PORT, Coturn, ServeRelay
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


def block_udp(namespace: str, *tcp_ports: int) -> None:
    """Inside `namespace`: no UDP at all (and no TCP to `tcp_ports`), as on a hospital network."""
    blocked_tcp = f"  tcp dport {{ {', '.join(map(str, tcp_ports))} }} drop\n" if tcp_ports else ""
    rules = (
        "table inet no_udp {\n chain out {\n  type filter hook output priority 0; policy accept;\n"
        f"  meta l4proto udp counter drop\n{blocked_tcp} }}\n"
        " chain in {\n  type filter hook input priority 0; policy accept;\n"
        "  meta l4proto udp drop\n }\n}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "-f", "-"],
        input=rules, text=True, check=True, capture_output=True,
    )  # fmt: skip


def unblock_udp(namespace: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", "no_udp"],
        capture_output=True,
    )


# From inside a namespace: does coturn answer a STUN Binding over UDP, and accept a TCP
# connection on its plain port? (The wall is checked, not assumed.)
_REACH = """
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(1.0)
try:
    udp.sendto(b"\\x00\\x01\\x00\\x00\\x21\\x12\\xa4\\x42" + os.urandom(12), (host, port))
    udp.recvfrom(512)
    print("udp-open")
except OSError:
    print("udp-blocked")
try:
    socket.create_connection((host, port), timeout=1.0).close()
    print("tcp-open")
except OSError:
    print("tcp-blocked")
"""


def reachability(namespace: str) -> set[str]:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", _REACH, topology.TURN_IP,
         str(TURN_PORT)],
        text=True, check=True, capture_output=True, timeout=20,
    )  # fmt: skip
    return set(result.stdout.split())


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_a_client_without_udp_calls_through_turn_over_tcp_or_tls(
    transport: str,
    nat_topology: topology.Topology,
    coturn_tls: Coturn,
    serve_relay: ServeRelay,
    booking_factory: BookingFactory,
    storage: Storage,
) -> None:
    """The reason TURN exists: a network that lets no UDP out. The client gets the TCP and TLS
    URLs from the config endpoint and calls through coturn over that transport (with TLS, the
    plain TCP port is blocked too: only TLS can have carried it)."""
    a, b = nat_topology.sites["a"], nat_topology.sites["b"]
    server = await serve_relay(
        turn_secret=coturn_tls.secret,
        turn_server_url=coturn_tls.url,
        turn_urls=(coturn_tls.tcp_url, coturn_tls.tls_url),
        turn_credential_ttl=TTL,
    )
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    assert reachability(a.client_ns) == {"udp-open", "tcp-open"}  # the check can tell
    block_udp(a.client_ns, *((TURN_PORT,) if transport == "tls" else ()))
    plain_tcp = "tcp-blocked" if transport == "tls" else "tcp-open"
    assert reachability(a.client_ns) == {"udp-blocked", plain_tcp}
    common = ("call", "--base-url", server.base_url, "--room", room_id)
    assert coturn_tls.ca_file is not None
    walled = Endpoint(
        f"no-udp-{transport}", a.client_ns, CLIENT, *common, "--token", booking.client_token,
        "--source-id", "43", "--expect-source", "44", "--use-config", "--relay-only",
        "--turn-transport", transport, "--ca-file", str(coturn_tls.ca_file),
    )  # fmt: skip
    direct = Endpoint(
        "direct", b.client_ns, CLIENT, *common, "--token", booking.psychologist_token,
        "--source-id", "44", "--expect-source", "43",
    )  # fmt: skip
    try:
        await walled.start()
        await direct.start()
        published = await walled.next_event("published", 30)
        seen_by_walled = await walled.next_event("verified", 60)
        seen_by_direct = await direct.next_event("verified", 60)
    finally:
        await walled.stop()
        await direct.stop()
        unblock_udp(a.client_ns)

    (turn,) = published["iceServers"]
    wanted = coturn_tls.tcp_url if transport == "tcp" else coturn_tls.tls_url
    assert turn["urls"] == [wanted], turn  # the URL the config endpoint handed out, and only it
    for pair in seen_by_walled["pairs"].values():
        assert pair["local"]["type"] == "relay", pair
        assert pair["local"]["address"][0] == topology.TURN_IP, pair
    # media both ways, each seeing and hearing the other
    assert seen_by_walled["source_id"] == 44 and seen_by_direct["source_id"] == 43
    assert seen_by_walled["heard_slots"] == [4] and seen_by_direct["heard_slots"] == [3]


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
