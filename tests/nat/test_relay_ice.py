"""The relay's deployable ICE settings: announced address (1:1 NAT), bind addresses, port range.

The relay binds 203.0.113.10 and announces 203.0.113.99; a 1:1 NAT on the public side forwards
the announced address to the bound one, as a cloud provider's does. Clients behind the symmetric
NATs only ever learn the announced address, so a call works only if the relay both advertises
it and answers from the right sockets.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from relay._aiortc import PortRangeExhausted, bind_udp, ice_sockets
from storage.base import Storage
from synth import netns
from synth.client import CallClient, SignalingError
from synth.tracks import PatternVideoTrack
from tests.helpers import BookingFactory
from tests.nat import topology
from tests.nat.conftest import ServeRelay
from tests.nat.procs import Endpoint
from tests.relay.helpers import open_room

pytestmark = [pytest.mark.netns, pytest.mark.media]

CLIENT = "tests.nat.client_proc"
PORTS = (40000, 40019)


@pytest.fixture
def one_to_one_nat(nat_topology: topology.Topology) -> Iterator[str]:
    nat_topology.announce(topology.ANNOUNCED_IP, topology.RELAY_IP)
    try:
        yield topology.ANNOUNCED_IP
    finally:
        nat_topology.withdraw()


def _address(line: str) -> tuple[str, int, str]:
    parts = line.split()
    return parts[4], int(parts[5]), parts[parts.index("typ") + 1]


async def test_every_relay_candidate_uses_the_announced_address_and_the_port_range(
    nat_topology: topology.Topology,
    one_to_one_nat: str,
    serve_relay: ServeRelay,
    booking_factory: BookingFactory,
    storage: Storage,
) -> None:
    a, b = nat_topology.sites["a"], nat_topology.sites["b"]
    server = await serve_relay(relay_announced_ip=one_to_one_nat, relay_udp_ports=PORTS)
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    common = ("call", "--base-url", server.base_url, "--room", room_id)
    one = Endpoint("call-a", a.client_ns, CLIENT, *common, "--token", booking.client_token,
                   "--source-id", "31", "--expect-source", "32")  # fmt: skip
    two = Endpoint("call-b", b.client_ns, CLIENT, *common, "--token", booking.psychologist_token,
                   "--source-id", "32", "--expect-source", "31")  # fmt: skip
    try:
        await one.start()
        await two.start()
        results = [await one.next_event("verified", 60), await two.next_event("verified", 60)]
        bound = {s.getsockname()[:2] for s in _relay_sockets(server.relay)}
    finally:
        await one.stop()
        await two.stop()

    for result, other in zip(results, (32, 31), strict=True):
        # each saw and heard the other participant: its pattern, its tone, nobody else's
        assert result["source_id"] == other and len(result["marks_ms"]) >= 3, result
        assert result["heard_slots"] == [other], result
        offered = [_address(c) for cs in result["relay_candidates"].values() for c in cs]
        assert offered, result
        for host, port, kind in offered:
            assert (host, kind) == (one_to_one_nat, "host"), offered
            assert PORTS[0] <= port <= PORTS[1], offered
        for pair in result["pairs"].values():
            host, port = pair["remote"]["address"]
            assert host == one_to_one_nat and PORTS[0] <= port <= PORTS[1], pair
    # the sockets behind those candidates: the bound (private) address, ports from the range
    assert bound, "the relay has no ICE sockets"
    for host, port in bound:
        assert host == topology.RELAY_IP and PORTS[0] <= port <= PORTS[1], bound


def _relay_sockets(relay: object) -> list[socket.socket]:
    """The UDP sockets of every relay-side ICE connection (test introspection only)."""
    sockets: list[socket.socket] = []
    for room in relay.rooms.values():  # type: ignore[attr-defined]
        for participant in room.participants.values():
            for pc in (participant._publisher_pc, participant._subscriber_pc):
                if pc is not None:
                    sockets += ice_sockets(pc)
    return sockets


async def test_an_exhausted_port_range_is_a_clear_signaling_error(
    nat_topology: topology.Topology,
    serve_relay: ServeRelay,
    booking_factory: BookingFactory,
    storage: Storage,
) -> None:
    ports = (40100, 40103)
    taken: list[socket.socket] = []
    for port in range(ports[0], ports[1] + 1):  # somebody else holds every port of the range
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((topology.RELAY_IP, port))
        taken.append(sock)
    try:
        server = await serve_relay(relay_udp_ports=ports)
        booking = await booking_factory()
        room_id = await open_room(storage, booking)
        client = CallClient(server.base_url, booking.client_token)
        try:
            await client.connect()
            await client.join(room_id)
            with pytest.raises(SignalingError) as refused:
                await client.publish(PatternVideoTrack(source_id=1))
        finally:
            await client.close()
    finally:
        for sock in taken:
            sock.close()
    assert refused.value.code == "NEGOTIATION_FAILED"
    assert "RELAY_UDP_PORTS 40100-40103" in str(refused.value), refused.value
    assert f"in use on {topology.RELAY_IP}" in str(refused.value)


@pytest.fixture
def own_namespace() -> None:
    """Fixed ports are only safe where nobody else binds: this process's own network namespace
    (the NAT tests' topology lives there too), not the host's loopback."""
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    netns.enter_process_netns()


def test_bind_udp_walks_the_range_and_raises_when_it_is_full(own_namespace: None) -> None:
    held = [bind_udp("127.0.0.1", (40300, 40302)) for _ in range(3)]
    try:
        assert sorted(s.getsockname()[1] for s in held) == [40300, 40301, 40302]
        with pytest.raises(PortRangeExhausted) as full:
            bind_udp("127.0.0.1", (40300, 40302))
        assert full.value.ports == (40300, 40302) and full.value.address == "127.0.0.1"
        with pytest.raises(OSError, match=r"cannot bind a UDP socket to 192\.0\.2\.1"):
            bind_udp("192.0.2.1", (40300, 40302))  # not a local address: not "exhausted"
    finally:
        for sock in held:
            sock.close()
