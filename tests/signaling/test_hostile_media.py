"""Malformed and hostile ICE candidates and SDP (issue 14, items 4 and 5), against the real app.

Malformed ones get `VALIDATION_ERROR` (candidates) or `NEGOTIATION_FAILED` (SDP) with the reason
in `details`, and nothing is logged with a traceback. Well-formed candidates naming an address
the relay must not contact are dropped quietly: the relay's ICE agent never learns them. Every
address used here is loopback or one the relay refuses, so nothing is sent off this machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.candidates import Ignored
from storage.base import Storage
from tests.conftest import MakeClient
from tests.helpers import BookingFactory
from tests.relay.helpers import open_room
from tests.signaling.helpers import (
    Client,
    Socket,
    candidate_message,
    join,
    logged_problems,
    offer_without_candidates,
    only_participant,
    ping,
    publish,
    receive,
    remote_addresses,
)

GOOD = "candidate:1 1 udp 2122260223 {address} {port} typ host generation 0"


@pytest.fixture
async def publishing(
    client: Client, booking_factory: BookingFactory, storage: Storage
) -> AsyncIterator[Socket]:
    """A client in a room whose publisher connection is negotiated (no candidates yet)."""
    booking = await booking_factory()
    ws = await join(client, booking.client_token, await open_room(storage, booking))
    await publish(ws, await offer_without_candidates())
    yield ws
    await ws.close()


@pytest.mark.parametrize(
    "line",
    [
        "candidate:x",
        "candidate:1 1 udp",
        "hello",
        "candidate:1 1 udp high 10.0.0.1 5000 typ host",  # non-integer priority
        "candidate:1 x udp 1 10.0.0.1 5000 typ host",
        "candidate:1 1 udp 1 10.0.0.1 5000 typ host rport x",
        "candidate:1 1 udp 1 relay.example.org 5000 typ host",
        "candidate:1 1 udp 1 10.0.0.1 70000 typ host",
        "candidate:1 1 udp 1 10.0.0.1 5000 type host",
        "candidate:1 1 udp 1 10.0.0.1 5000 typ bogus",
        "candidate:1 1 sctp 1 10.0.0.1 5000 typ host",
        "candidate:1 1 udp 1 10.0.0.1 5000 typ host raddr",
        "candidate:1 1 udp 99999999999 10.0.0.1 5000 typ host",
        "candidate:\u00e9 1 udp 1 10.0.0.1 5000 typ host",
    ],
)
async def test_a_malformed_candidate_is_a_validation_error_without_a_traceback(
    publishing: Socket, client: Client, caplog: pytest.LogCaptureFixture, line: str
) -> None:
    await publishing.send_json(candidate_message(line))
    refusal = await receive(publishing)
    assert refusal["event"] == "error", refusal
    assert refusal["data"]["code"] == "VALIDATION_ERROR", refusal
    details = refusal["data"]["details"]
    assert details["field"] == "candidate.candidate"
    assert isinstance(details["reason"], str) and details["reason"]
    assert logged_problems(caplog) == []
    await ping(publishing)
    assert remote_addresses(only_participant(client)) == set()


async def test_an_offer_with_a_duplicate_mid_is_refused_and_changes_nothing(
    client: Client,
    booking_factory: BookingFactory,
    storage: Storage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    booking = await booking_factory()
    ws = await join(client, booking.client_token, await open_room(storage, booking))
    sdp = await offer_without_candidates()
    assert "a=mid:1" in sdp
    await ws.send_json(
        {
            "event": "offer",
            "data": {"offer": {"type": "offer", "sdp": sdp.replace("a=mid:1", "a=mid:0")}},
        }
    )
    refusal = await receive(ws)
    assert refusal["data"]["code"] == "NEGOTIATION_FAILED", refusal
    assert "mid" in refusal["data"]["details"]["reason"]
    assert logged_problems(caplog) == []
    assert only_participant(client).producers == {}
    await publish(ws, sdp)  # the same connection still negotiates a valid offer
    assert set(only_participant(client).producers) == {"0", "1"}
    await ws.close()


def without_section(sdp: str, mid: str) -> str:
    """`sdp` with the media section of `mid` removed, from its m-line to the next one."""
    head, *sections = sdp.split("\r\nm=")
    kept = [s for s in sections if f"\r\na=mid:{mid}\r\n" not in s]
    assert len(kept) == len(sections) - 1
    return "\r\nm=".join([head, *kept])


@pytest.mark.parametrize("change", ["audio section removed", "sections swapped"])
async def test_a_new_offer_that_drops_or_reorders_sections_is_refused_and_changes_nothing(
    publishing: Socket, client: Client, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    # Found by the fuzzer: aiortc applied such an offer, then failed to answer it
    # (AttributeError), which reached the client as INTERNAL_ERROR.
    sdp = await offer_without_candidates()
    if change == "audio section removed":
        bad = without_section(sdp, "0")
    else:
        bad = sdp.replace("a=mid:0\r\n", "a=mid:X\r\n").replace("a=mid:1\r\n", "a=mid:0\r\n")
        bad = bad.replace("a=mid:X\r\n", "a=mid:1\r\n").replace("BUNDLE 0 1", "BUNDLE 1 0")
    before = set(only_participant(client).producers)
    await publishing.send_json({"event": "offer", "data": {"offer": {"type": "offer", "sdp": bad}}})
    refusal = await receive(publishing)
    assert refusal["data"]["code"] == "NEGOTIATION_FAILED", refusal
    assert "earlier media sections" in refusal["data"]["details"]["reason"]
    assert logged_problems(caplog) == []
    assert set(only_participant(client).producers) == before == {"0", "1"}
    await publish(publishing, sdp)  # the connection still renegotiates a valid offer


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", Ignored.ADDRESS),  # loopback
        ("::1", Ignored.ADDRESS),
        ("::ffff:127.0.0.1", Ignored.ADDRESS),  # IPv4-mapped loopback
        ("169.254.10.20", Ignored.ADDRESS),  # link-local
        ("fe80::1", Ignored.ADDRESS),
        ("224.0.0.251", Ignored.ADDRESS),  # multicast
        ("ff02::1", Ignored.ADDRESS),
        ("0.0.0.0", Ignored.ADDRESS),  # unspecified
        ("10.1.2.3", Ignored.ADDRESS),  # RFC 1918
        ("172.16.0.9", Ignored.ADDRESS),
        ("192.168.1.20", Ignored.ADDRESS),
        ("100.64.0.7", Ignored.ADDRESS),  # CGNAT
        ("fd12:3456::1", Ignored.ADDRESS),  # ULA
        ("192.0.2.1", Ignored.ADDRESS),  # documentation
        ("3c1a8b4e-0d5f-4a3e-9a1c-2b7e8f6d5c4a.local", Ignored.MDNS),  # Chromium's mDNS
    ],
)
async def test_a_candidate_the_relay_must_not_contact_is_dropped_quietly(
    publishing: Socket, client: Client, caplog: pytest.LogCaptureFixture, address: str, why: Ignored
) -> None:
    await publishing.send_json(candidate_message(GOOD.format(address=address, port=5000)))
    await ping(publishing)  # no error event came first
    participant = only_participant(client)
    assert remote_addresses(participant) == set()
    assert participant.candidates_ignored[why] == 1
    assert logged_problems(caplog) == []


async def test_the_relays_own_address_is_not_contacted(publishing: Socket, client: Client) -> None:
    participant = only_participant(client)
    pc = participant._publisher_pc
    assert pc is not None
    own = pc.getTransceivers()[0].receiver.transport.transport.iceGatherer.getLocalCandidates()
    assert own, "the relay gathered candidates of its own"
    for index, local in enumerate(own[:5]):
        await publishing.send_json(candidate_message(GOOD.format(address=local.ip, port=9 + index)))
    await ping(publishing)
    assert remote_addresses(participant) == set()
    assert participant.candidates_ignored[Ignored.ADDRESS] == min(len(own), 5)


async def test_an_allowed_range_is_contacted(
    make_client: MakeClient, booking_factory: BookingFactory, storage: Storage
) -> None:
    client = await make_client(relay_allowed_peer_ranges=("127.0.0.0/8",))
    booking = await booking_factory()
    ws = await join(client, booking.client_token, await open_room(storage, booking))
    await publish(ws, await offer_without_candidates())
    await ws.send_json(candidate_message(GOOD.format(address="127.0.0.2", port=5000)))
    await ws.send_json(candidate_message(GOOD.format(address="10.9.9.9", port=5000)))
    await ping(ws)
    participant = only_participant(client)
    assert remote_addresses(participant) == {"127.0.0.2"}
    assert participant.candidates_ignored[Ignored.ADDRESS] == 1
    await ws.close()


async def test_candidates_in_the_offer_are_screened_like_trickled_ones(
    client: Client, booking_factory: BookingFactory, storage: Storage
) -> None:
    booking = await booking_factory()
    ws = await join(client, booking.client_token, await open_room(storage, booking))
    sdp = await offer_without_candidates()
    lines = "".join(f"a={GOOD.format(address=a, port=5000)}\r\n" for a in ("127.0.0.1", "10.0.0.1"))
    with_candidates = sdp.replace("a=mid:0\r\n", "a=mid:0\r\n" + lines + "a=end-of-candidates\r\n")
    await publish(ws, with_candidates)
    participant = only_participant(client)
    assert remote_addresses(participant) == set()
    assert participant.candidates_ignored[Ignored.ADDRESS] == 2
    await ws.close()


async def test_a_malformed_candidate_in_the_offer_is_a_negotiation_failure(
    client: Client,
    booking_factory: BookingFactory,
    storage: Storage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    booking = await booking_factory()
    ws = await join(client, booking.client_token, await open_room(storage, booking))
    sdp = await offer_without_candidates()
    bad = sdp.replace(
        "a=mid:0\r\n", "a=mid:0\r\na=candidate:1 1 udp 1 relay.example.org 5000 typ host\r\n"
    )
    await ws.send_json({"event": "offer", "data": {"offer": {"type": "offer", "sdp": bad}}})
    refusal = await receive(ws)
    assert refusal["data"]["code"] == "NEGOTIATION_FAILED", refusal
    assert "IP address" in refusal["data"]["details"]["reason"]
    assert logged_problems(caplog) == []
    await ws.close()


async def test_trickled_candidates_are_capped_per_connection(
    make_client: MakeClient, booking_factory: BookingFactory, storage: Storage
) -> None:
    client = await make_client(ws_message_burst=1000)  # the cap, not the message rate, refuses
    booking = await booking_factory()
    ws = await join(client, booking.client_token, await open_room(storage, booking))
    await publish(ws, await offer_without_candidates())
    for port in range(1000, 1050):
        await ws.send_json(candidate_message(GOOD.format(address="127.0.0.1", port=port)))
    await ping(ws)  # fifty distinct candidates: all accepted (and dropped: loopback)
    await ws.send_json(candidate_message(GOOD.format(address="127.0.0.1", port=1000)))
    await ping(ws)  # one seen before does not count again
    await ws.send_json(candidate_message(GOOD.format(address="127.0.0.1", port=2000)))
    refusal = await receive(ws)
    assert refusal["data"]["code"] == "VALIDATION_ERROR", refusal
    assert "at most 50" in refusal["data"]["details"]["reason"]
    await ping(ws)
    await ws.close()
