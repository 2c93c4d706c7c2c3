"""Two clients, each behind its own symmetric NAT: peer-to-peer fails, the relay connects them.

Both clients learn their public mapping from a STUN server, so the direct attempt has every
candidate a browser would have; it fails because each NAT gives the peer's traffic a different
mapping than the one STUN saw and drops unsolicited inbound packets. Through the relay, on the
public side, both decode the other's pattern video (source ids) and hear its audio marks.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from relay._aiortc import selected_pair
from storage.base import Storage
from tests.helpers import BookingFactory
from tests.nat import topology
from tests.nat.conftest import ServeRelay
from tests.nat.procs import Endpoint
from tests.nat.stun_server import stun_server
from tests.relay.helpers import open_room

pytestmark = [pytest.mark.netns, pytest.mark.media]

CLIENT = "tests.nat.client_proc"
STUN_PORT = 3479
# The direct attempt gets this long to connect: many times what the relayed call needs
# (measured: both clients verified media within ~10 s of starting, on a loaded 2-core machine).
P2P_WINDOW = 20.0


def _candidate_types(lines: list[str]) -> dict[str, list[str]]:
    """{type: ["ip:port", …]} from SDP candidate lines."""
    found: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split()
        found.setdefault(parts[parts.index("typ") + 1], []).append(f"{parts[4]}:{parts[5]}")
    return found


async def _direct_attempt(a: topology.Site, b: topology.Site, stun: str) -> dict[str, Any]:
    window = ("--stun", stun, "--timeout", str(P2P_WINDOW))
    offerer = Endpoint("p2p-offer", a.client_ns, CLIENT, "p2p", "--role", "offer", *window)
    answerer = Endpoint("p2p-answer", b.client_ns, CLIENT, "p2p", "--role", "answer", *window)
    try:
        await offerer.start()
        await answerer.start()
        offer = await offerer.next_event("offer", 20)
        await answerer.send(sdp=offer["sdp"])
        answer = await answerer.next_event("answer", 20)
        await offerer.send(sdp=answer["sdp"])
        results = await asyncio.gather(
            offerer.next_event("result", P2P_WINDOW + 15),
            answerer.next_event("result", P2P_WINDOW + 15),
        )
        return {"offer": results[0], "answer": results[1]}
    finally:
        await offerer.stop()
        await answerer.stop()


async def test_symmetric_nats_defeat_peer_to_peer_but_the_relay_connects_both(
    nat_topology: topology.Topology,
    serve_relay: ServeRelay,
    booking_factory: BookingFactory,
    storage: Storage,
) -> None:
    a, b = nat_topology.sites["a"], nat_topology.sites["b"]
    server = await serve_relay()
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    stun = f"stun:{topology.TURN_IP}:{STUN_PORT}"

    async with stun_server(topology.TURN_IP, STUN_PORT):
        direct = asyncio.create_task(_direct_attempt(a, b, stun))
        caller = Endpoint(
            "call-a", a.client_ns, CLIENT, "call", "--base-url", server.base_url,
            "--token", booking.client_token, "--room", room_id, "--source-id", "11",
            "--expect-source", "22", "--stun", stun,
        )  # fmt: skip
        callee = Endpoint(
            "call-b", b.client_ns, CLIENT, "call", "--base-url", server.base_url,
            "--token", booking.psychologist_token, "--room", room_id, "--source-id", "22",
            "--expect-source", "11", "--stun", stun,
        )  # fmt: skip
        try:
            await caller.start()
            await callee.start()
            seen_by_a, seen_by_b = await asyncio.gather(
                caller.next_event("verified", 60), callee.next_event("verified", 60)
            )
            # while both still publish: the relay's view of each client's path
            room = server.relay.rooms[room_id]
            relay_pairs = {
                p.info.user_id: selected_pair(p._publisher_pc)
                for p in room.participants.values()
                if p._publisher_pc is not None
            }
            attempt = await direct
        finally:
            if not direct.done():
                direct.cancel()
                with contextlib.suppress(BaseException):
                    await direct
            await caller.stop()
            await callee.stop()

    # Direct: both had host and server-reflexive (public) candidates, and no pair ever worked:
    # aiortc reports "failed", or is still "checking" at the end of the window.
    for side, site in (("offer", a), ("answer", b)):
        result = attempt[side]
        types = _candidate_types(result["local_candidates"])
        assert any(c.startswith(f"{site.router_wan_ip}:") for c in types.get("srflx", [])), types
        assert result["state"] in ("failed", f"still checking after {P2P_WINDOW} s"), result

    # Through the relay: each decoded the other's pattern and heard its marks.
    assert seen_by_a["source_id"] == 22 and seen_by_b["source_id"] == 11
    assert len(seen_by_a["marks_ms"]) >= 3 and len(seen_by_b["marks_ms"]) >= 3
    # and heard the other's tone, nobody else's (source slot = source id % 40)
    assert seen_by_a["heard_slots"] == [22] and seen_by_b["heard_slots"] == [11]
    for seen, site, user in (
        (seen_by_a, a, booking.client.id),
        (seen_by_b, b, booking.psychologist.id),
    ):
        for pair in seen["pairs"].values():
            assert pair["local"]["type"] == "host" and pair["local"]["address"][0] == site.client_ip
            assert pair["remote"]["address"][0] == topology.RELAY_IP
        # the relay reached the client at a NAT mapping it learned from the checks (prflx),
        # a different port from the one the STUN server saw for the same socket: symmetric NAT
        relay_side = relay_pairs[user]
        assert relay_side is not None and relay_side.remote_type == "prflx"
        assert relay_side.remote_address[0] == site.router_wan_ip
        client_port = seen["pairs"]["publisher"]["local"]["address"][1]
        srflx = [
            line.split()
            for line in seen["local_candidates"]
            if " typ srflx " in line
            and line.split()[line.split().index("rport") + 1] == str(client_port)
        ]
        assert srflx and int(srflx[0][5]) != relay_side.remote_address[1], (srflx, relay_side)
