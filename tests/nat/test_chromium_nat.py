"""Chromium behind a symmetric NAT: no direct path to a peer behind another one, a call through
the relay with an aiortc participant, and the same call with relayed (TURN) candidates only.

Both ends run inside the client namespaces of tests/nat/topology.py: Chromium through
tests/nat/browser_proc.py (the real call page, served by the relay on its public address), the
aiortc participant through tests/nat/client_proc.py. Chromium's camera is its fake device, so the
aiortc side checks that frames decode and audio arrives rather than reading a pattern.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from relay._aiortc import SelectedPair, selected_pair
from storage.base import Storage
from tests.browser import pages
from tests.browser.conftest import CHROMIUM
from tests.helpers import BookingFactory
from tests.nat import topology
from tests.nat.conftest import Coturn, RelayServer, ServeRelay
from tests.nat.procs import Endpoint
from tests.nat.stun_server import stun_server
from tests.relay.helpers import open_room

pytestmark = [pytest.mark.netns, pytest.mark.media, pytest.mark.browser]

BROWSER = "tests.nat.browser_proc"
CLIENT = "tests.nat.client_proc"
STUN_PORT = 3479
# The direct attempt lasts at least this long after the answer, and at least until the relayed
# call has carried media both ways (so it never had less time than the relay needed).
P2P_WINDOW = 20.0
# Bounds for one step on a loaded 2-core machine (Chromium starts in seconds there).
STEP = 60.0


@pytest.fixture(scope="module")
def chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (./scripts/test installs it)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright for Python is not installed (./scripts/test installs it)")


def _srflx(lines: list[str]) -> list[str]:
    """The server-reflexive candidates among SDP candidate lines, as "ip:port"."""
    return [
        f"{p[4]}:{p[5]}"
        for p in (line.split() for line in lines)
        if p[p.index("typ") + 1] == "srflx"
    ]


def _by_role(pairs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {entry["role"]: entry for entry in pairs}
    assert set(found) == {"publisher", "subscriber"}, pairs
    return found


async def _direct_attempt(
    a: topology.Site, b: topology.Site, stun: str, call_verified: asyncio.Event
) -> dict[str, Any]:
    """Chromium (behind NAT a) offers a data channel to aiortc (behind NAT b), with STUN."""
    offerer = Endpoint("p2p-chromium", a.client_ns, BROWSER, "p2p", "--stun", stun)
    answerer = Endpoint(
        "p2p-aiortc", b.client_ns, CLIENT, "p2p", "--role", "answer", "--stun", stun,
        "--timeout", str(P2P_WINDOW),
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    try:
        await offerer.start()
        await answerer.start()
        offer = await offerer.next_event("offer", STEP)
        await answerer.send(sdp=offer["sdp"])
        answer = await answerer.next_event("answer", STEP)
        await offerer.send(sdp=answer["sdp"])
        answered = loop.time()
        answerer_result = await answerer.next_event("result", P2P_WINDOW + STEP)
        await asyncio.wait_for(call_verified.wait(), 2 * STEP)
        await asyncio.sleep(max(0.0, answered + P2P_WINDOW - loop.time()))
        await offerer.send(report=True)
        offerer_result = await offerer.next_event("result", STEP)
        return {"offer": offerer_result, "answer": answerer_result}
    finally:
        await asyncio.gather(offerer.stop(), answerer.stop())


def _relay_view(server: RelayServer, room_id: str) -> dict[str, SelectedPair | None]:
    """user id → the candidate pair the relay selected for that user's publisher connection."""
    room = server.relay.rooms[room_id]
    return {
        p.info.user_id: selected_pair(p._publisher_pc)
        for p in room.participants.values()
        if p._publisher_pc is not None
    }


async def call_between(browser: Endpoint, peer: Endpoint) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the page, then the aiortc participant, and wait until each has verified the other's
    media. The aiortc participant waits a bounded time for the other one: it starts once the page
    is in the call."""
    await browser.start()
    await browser.next_event("connected", STEP)
    await peer.start()
    seen_by_browser, seen_by_peer = await asyncio.gather(
        browser.next_event("verified", STEP), peer.next_event("verified", STEP)
    )
    return seen_by_browser, seen_by_peer


async def test_chromium_behind_symmetric_nat_reaches_aiortc_only_through_the_relay(
    chromium: None,
    nat_topology: topology.Topology,
    serve_relay: ServeRelay,
    booking_factory: BookingFactory,
    storage: Storage,
) -> None:
    a, b = nat_topology.sites["a"], nat_topology.sites["b"]
    stun = f"stun:{topology.TURN_IP}:{STUN_PORT}"
    # the page gets the STUN server from the config endpoint, as in production
    server = await serve_relay(stun_server_url=stun)
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    url = pages.call_url(server.base_url, booking.session.id, booking.client_token)

    call_verified = asyncio.Event()
    async with stun_server(topology.TURN_IP, STUN_PORT) as stun_seen:
        direct = asyncio.create_task(_direct_attempt(a, b, stun, call_verified))
        browser = Endpoint(
            "call-chromium", a.client_ns, BROWSER, "call", "--url", url,
            "--origin", server.base_url, "--camera", "red", "--expect-pattern", "22",
        )  # fmt: skip
        peer = Endpoint(
            "call-aiortc", b.client_ns, CLIENT, "call", "--base-url", server.base_url,
            "--token", booking.psychologist_token, "--room", room_id, "--source-id", "22",
            "--stun", stun,
        )  # fmt: skip
        try:
            seen_by_browser, seen_by_peer = await call_between(browser, peer)
            relay_pairs = _relay_view(server, room_id)  # while both still publish
            call_verified.set()
            attempt = await direct
        finally:
            if not direct.done():
                direct.cancel()
                with contextlib.suppress(BaseException):
                    await direct
            await asyncio.gather(browser.stop(), peer.stop())

    # Direct: both ends had a server-reflexive (public) candidate, and no pair ever worked
    # during the whole window (the report is taken once the relayed call was verified and the
    # window is over: the attempt's own wait, so it is not asserted again).
    offer, answer = attempt["offer"], attempt["answer"]
    assert any(c.startswith(f"{a.router_wan_ip}:") for c in _srflx(offer["local_candidates"])), (
        offer
    )
    assert any(c.startswith(f"{b.router_wan_ip}:") for c in _srflx(answer["local_candidates"])), (
        answer
    )
    assert offer["connectionState"] in ("connecting", "failed"), offer
    assert offer["state"] in ("checking", "disconnected", "failed"), offer
    assert "connected" not in offer["history"] and "completed" not in offer["history"], offer
    # Chromium tried pairs (sampled during the attempt: it drops them once ICE failed); none
    # succeeded
    assert offer["most_pairs"] > 0 and "succeeded" not in offer["pair_states"], offer
    assert answer["state"] in ("failed", f"still checking after {P2P_WINDOW} s"), answer

    # Through the relay: Chromium decodes the aiortc participant's video and receives its
    # audio, both counters still rising; the aiortc participant decodes Chromium's fake camera
    # and receives its microphone.
    first, decoded, latest = seen_by_browser["frames_decoded"]
    assert first > 0 and decoded >= first + 30 and latest >= decoded, seen_by_browser
    _, before, after = seen_by_browser["audio_packets"]
    assert after >= before + 50 and before > 0, seen_by_browser
    assert seen_by_peer["frames_received"] >= 30 and seen_by_peer["audio_frames"] >= 50
    # and each picture is the other's: Chromium shows the aiortc pattern (source 22), the
    # aiortc participant gets Chromium's red camera
    assert seen_by_browser["pattern_source"] == 22, seen_by_browser
    assert seen_by_peer["colour"] == "red", seen_by_peer

    # Each of Chromium's connections (publisher, subscriber) reached the relay's public address
    # from behind the NAT: its selected local candidate is the NAT's mapping, learned from the
    # relay's check responses (peer-reflexive), not the one STUN reported (server-reflexive).
    chromium_pairs = _by_role(seen_by_browser["pairs"])
    for role, entry in chromium_pairs.items():
        assert "srflx" in entry["localCandidateTypes"], (role, entry)  # STUN did answer
        pair = entry["pair"]
        assert pair is not None and pair["state"] == "succeeded", (role, entry)
        assert pair["local"]["type"] == "prflx", (role, entry)
        assert pair["local"]["address"] == a.router_wan_ip, (role, entry)
        assert pair["remote"]["address"] == topology.RELAY_IP, (role, entry)
        assert pair["bytesReceived"] > 0 and pair["bytesSent"] > 0, (role, entry)
    for pair in seen_by_peer["pairs"].values():
        assert pair["local"]["type"] == "host" and pair["local"]["address"][0] == b.client_ip
        assert pair["remote"]["address"][0] == topology.RELAY_IP

    # The relay reached each client at a mapping it learned from the checks (peer-reflexive) on
    # that client's NAT. For Chromium's publisher both ends name the same mapping, and the STUN
    # server never saw it: the NAT mapped the same socket differently per destination.
    for user, site in ((booking.client.id, a), (booking.psychologist.id, b)):
        relay_side = relay_pairs[user]
        assert relay_side is not None and relay_side.remote_type == "prflx", (user, relay_side)
        assert relay_side.remote_address[0] == site.router_wan_ip, (user, relay_side)
    mapping = relay_pairs[booking.client.id]
    assert mapping is not None
    publisher_local = chromium_pairs["publisher"]["pair"]["local"]
    assert (publisher_local["address"], publisher_local["port"]) == mapping.remote_address
    assert any(host == a.router_wan_ip for host, _ in stun_seen.seen), stun_seen.seen
    assert mapping.remote_address not in stun_seen.seen, (mapping, stun_seen.seen)


async def test_relay_only_chromium_calls_through_coturn(
    chromium: None,
    nat_topology: topology.Topology,
    coturn: Coturn,
    serve_relay: ServeRelay,
    booking_factory: BookingFactory,
    storage: Storage,
) -> None:
    a, b = nat_topology.sites["a"], nat_topology.sites["b"]
    server = await serve_relay(
        turn_secret=coturn.secret, turn_server_url=coturn.url, turn_credential_ttl=600
    )
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    url = pages.call_url(server.base_url, booking.session.id, booking.client_token, relayOnly="1")
    browser = Endpoint(
        "relay-only-chromium", a.client_ns, BROWSER, "call", "--url", url,
        "--origin", server.base_url, "--camera", "red", "--expect-pattern", "42",
    )  # fmt: skip
    peer = Endpoint(
        "call-aiortc", b.client_ns, CLIENT, "call", "--base-url", server.base_url,
        "--token", booking.psychologist_token, "--room", room_id, "--source-id", "42",
    )  # fmt: skip
    try:
        seen_by_browser, seen_by_peer = await call_between(browser, peer)
        relay_pairs = _relay_view(server, room_id)
    finally:
        await asyncio.gather(browser.stop(), peer.stop())

    # Chromium gathered relayed candidates only (its TURN credentials came from the config
    # endpoint) and both its connections run through coturn to the relay's public address.
    for role, entry in _by_role(seen_by_browser["pairs"]).items():
        assert entry["localCandidateTypes"] == ["relay"], (role, entry)
        pair = entry["pair"]
        assert pair is not None and pair["state"] == "succeeded", (role, entry)
        assert pair["local"]["type"] == "relay", (role, entry)
        assert pair["local"]["address"] == topology.TURN_IP, (role, entry)
        assert pair["local"]["relayProtocol"] == "udp", (role, entry)
        assert pair["remote"]["address"] == topology.RELAY_IP, (role, entry)
    # the relay sees coturn's relayed address as the browser's
    relay_side = relay_pairs[booking.client.id]
    assert relay_side is not None and relay_side.remote_address[0] == topology.TURN_IP, relay_side
    # and media flowed both ways
    first, decoded, latest = seen_by_browser["frames_decoded"]
    assert first > 0 and decoded >= first + 30 and latest >= decoded, seen_by_browser
    _, before, after = seen_by_browser["audio_packets"]
    assert after >= before + 50 and before > 0, seen_by_browser
    assert seen_by_peer["frames_received"] >= 30 and seen_by_peer["audio_frames"] >= 50
    assert seen_by_browser["pattern_source"] == 42, seen_by_browser
    assert seen_by_peer["colour"] == "red", seen_by_peer
