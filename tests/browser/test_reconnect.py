"""Automatic reconnection: the page comes back into the call after its WebSocket drops."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from synth import netns
from synth.impair import ClientNamespace, Impairment
from tests.browser import pages
from tests.browser.conftest import Browsers, Server
from tests.helpers import BookingFactory

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]


async def test_dropped_websocket_reconnects_and_media_resumes(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    client, psychologist = await start_call(browsers, server, booking_factory)

    # The network drops the client's WebSocket: it shows "reconnecting", then is back in.
    await client.evaluate("window.smilingCall.dropConnection()")
    await client.wait_for_function(
        "window.smilingCall.log.some((e) => e.event === 'phase' && e.phase === 'reconnecting')",
        timeout=5000,
    )
    await pages.wait_phase(client, "connected")
    assert await client.evaluate("window.smilingCall.reconnects") == 1
    status = await client.locator("#connection-status").inner_text()
    assert status.strip() == "Connected"

    # Both directions flow again: the psychologist decodes the client's new publisher, the
    # client's new subscriber decodes the psychologist.
    await pages.wait_remote_count(psychologist, 1)
    await pages.wait_remote_count(client, 1)
    await pages.wait_frames_rising(psychologist, 15)
    await pages.wait_frames_rising(client, 15)
    await pages.wait_audio_flowing(client)
    # ... and each picture is the other's camera (a single tile: the old one went away)
    await pages.wait_remote_colours(client, ["blue"])
    await pages.wait_remote_colours(psychologist, ["red"])


LOCAL_ICE_PORTS = """async () => {
  // Every UDP port the page's ICE agents use (all host candidates, not only the selected pair:
  // with two addresses Chromium would otherwise fail over to another pair).
  const ports = [];
  for (const pc of window.smilingCall.peerConnections()) {
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.type === "local-candidate" && s.protocol === "udp") ports.push(s.port);
    });
  }
  return ports;
}"""


def nft(*commands: str) -> None:
    for command in commands:
        subprocess.run(["nft", *shlex.split(command)], check=True, capture_output=True)


def block_udp_ports(ports: list[int]) -> None:
    port_set = "{ " + ", ".join(str(p) for p in sorted(set(ports))) + " }"
    nft(
        "add table inet browser_test",
        "add chain inet browser_test out { type filter hook output priority 0 ; }",
        f"add rule inet browser_test out udp sport {port_set} drop",
        f"add rule inet browser_test out udp dport {port_set} drop",
    )


def unblock() -> None:
    nft("delete table inet browser_test")


async def start_call(
    browsers: Browsers,
    server: Server,
    booking_factory: BookingFactory,
    netns_name: str | None = None,
) -> tuple[Page, Page]:
    """A call of two pages decoding each other (the client's Chromium in `netns_name`)."""
    booking = await booking_factory()
    # each camera shows its own colour: the pictures say who sent them
    client = await browsers.page("client", camera="red", netns_name=netns_name)
    psychologist = await browsers.page("psychologist", camera="blue")
    await psychologist.goto(
        pages.call_url(server.base_url, booking.session.id, booking.psychologist_token)
    )
    await client.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    await pages.wait_phase(client, "connected")
    await pages.wait_remote_count(client, 1)
    await pages.wait_video_decoding(client)
    await pages.wait_video_decoding(psychologist)
    await pages.wait_remote_colours(client, ["blue"])
    await pages.wait_remote_colours(psychologist, ["red"])
    return client, psychologist


def need_nft() -> None:
    if shutil.which("nft") is None:
        pytest.skip("needs nftables' `nft` to cut the client's UDP (./scripts/test installs it)")


async def test_ice_failure_reconnects_on_new_connections(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    """The client's UDP ports go dead (as on a network change) while its WebSocket stays up:
    ICE drops, the page rebuilds its connections on fresh ports, media flows again."""
    need_nft()
    client, psychologist = await start_call(browsers, server, booking_factory)
    ports = await client.evaluate(LOCAL_ICE_PORTS)
    assert len(ports) >= 2, ports
    block_udp_ports(ports)
    try:
        await client.wait_for_function(
            "window.smilingCall.log.some((e) => e.event === 'reconnect')", timeout=20000
        )
        await pages.wait_phase(client, "connected")
        await client.locator("#connection-status[data-state='connected']").wait_for()
        assert await client.evaluate("window.smilingCall.reconnects") == 1
        assert set(await client.evaluate(LOCAL_ICE_PORTS)).isdisjoint(ports)
        await pages.wait_frames_rising(client, 15)
        await pages.wait_frames_rising(psychologist, 15)
        await pages.wait_remote_colours(client, ["blue"])
        await pages.wait_remote_colours(psychologist, ["red"])
    finally:
        unblock()


async def test_media_stall_with_ice_still_connected_reconnects(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    """Media stops reaching the client while ICE's STUN checks still pass (so ICE says
    "connected"): the page's watchdog notices that nothing arrives and rebuilds the connections."""
    need_nft()
    client, psychologist = await start_call(browsers, server, booking_factory)
    ports = await client.evaluate(LOCAL_ICE_PORTS)
    port_set = "{ " + ", ".join(str(p) for p in sorted(set(ports))) + " }"
    # Drop everything sent to the client's ICE ports except STUN (magic cookie at payload
    # offset 4, i.e. bit 96 of the UDP header + payload): RTP and RTCP stop, consent checks go on.
    nft(
        "add table inet browser_test",
        "add chain inet browser_test out { type filter hook output priority 0 ; }",
        f"add rule inet browser_test out udp dport {port_set} @th,96,32 != 0x2112a442 drop",
    )
    try:
        await client.wait_for_function(
            "window.smilingCall.log.some((e) => e.event === 'reconnect')", timeout=25000
        )
        reasons = await client.evaluate(
            "window.smilingCall.log.filter((e) => e.event === 'reconnect').map((e) => e.why)"
        )
        # One reconnect, by one of the two watches: the 2 s watch on every byte from the relay
        # usually, but the STUN let through (the relay's consent checks and the answers to the
        # page's own, each every few seconds) can keep resetting it, and then the 12 s
        # media-stall watchdog fires (seen once in a full-suite run).
        assert len(reasons) == 1, reasons
        assert reasons[0] in ("nothing received from the relay", "no media received"), reasons
        await pages.wait_phase(client, "connected")
        await pages.wait_frames_rising(client, 15)
        await pages.wait_frames_rising(psychologist, 15)
        await pages.wait_remote_colours(client, ["blue"])
        await pages.wait_remote_colours(psychologist, ["red"])
    finally:
        unblock()


# -- a participant's whole link cut and restored (issue 15, "Reconnection") -------------------

PEER_EVENTS = (
    "window.smilingCall.log.filter((e) => e.event.startsWith('peer-')).map((e) => e.event)"
)


def cut(namespace: str) -> None:
    """Drop every packet in and out of the namespace (TCP signaling, UDP media: all of it)."""
    rules = (
        "table inet cut {\n"
        "  chain out { type filter hook output priority 0; policy drop; }\n"
        "  chain in { type filter hook input priority 0; policy drop; }\n"
        "}\n"
    )
    netns.nft(namespace, rules)


def restore(namespace: str) -> None:
    netns.drop_table(namespace, "cut")


async def test_a_five_second_outage_resumes_media_both_ways_without_a_left(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    """The client's Chromium runs in a namespace of its own; all its packets are dropped for
    5 s, then let through again. Its page notices within 3 s and reconnects by itself; the
    psychologist's page shows "reconnecting", never "left", and both decode again within 2 s
    of the link's return (this test allows the bounded waits some slack on a loaded machine:
    the figure is scripts/bench_reconnect's)."""
    need_nft()
    with ClientNamespace(Impairment()) as namespace:
        client, psychologist = await start_call(browsers, server, booking_factory, namespace.name)

        cut(namespace.name)
        cut_at = time.monotonic()
        try:
            await client.wait_for_function(
                "window.smilingCall.log.some((e) => e.event === 'reconnect')", timeout=3500
            )
            detected = time.monotonic() - cut_at
            await psychologist.locator("#participants [data-reconnecting='true']").wait_for(
                state="attached", timeout=6000
            )
            await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - cut_at)))  # the outage
        finally:
            restore(namespace.name)
        restored_at = time.monotonic()
        await pages.wait_phase(client, "connected", within_ms=10000)
        await pages.wait_remote_colours(client, ["blue"])
        await pages.wait_remote_colours(psychologist, ["red"])
        await pages.wait_frames_rising(client, 10)
        await pages.wait_frames_rising(psychologist, 10)
        resumed = time.monotonic() - restored_at
        assert detected < 3.5, detected
        assert await psychologist.evaluate(PEER_EVENTS) == ["peer-reconnecting"]
        assert await psychologist.locator("#participants [data-reconnecting='true']").count() == 0
        print(f"detected after {detected:.2f} s; media both ways {resumed:.2f} s after restore")
        assert resumed < 6.0, resumed


def drop_signaling_replies(namespace: str, port: int) -> None:
    """Drop what the server's TCP port sends into the namespace: the page's WebSocket hears
    nothing (no pong, no event; its TCP retransmits), while its pings still reach the server
    (which therefore never sees a silent socket) and the UDP media flows both ways."""
    rules = (
        "table inet mute {\n"
        "  chain in { type filter hook input priority 0; "
        f"tcp sport {port} drop; }}\n"
        "}\n"
    )
    netns.nft(namespace, rules)


def undrop_signaling_replies(namespace: str) -> None:
    netns.drop_table(namespace, "mute")


async def test_a_stalled_websocket_while_the_media_arrives_is_no_dead_link(
    browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    """A weak link stalls the signaling socket's TCP for seconds behind lost segments while the
    relay's audio and RTCP still arrive (issue 15, audio first): the page must not take that
    link for dead. Its WebSocket hears nothing for 3.5 s (its own watch gives up after 2.5 s of
    silence; the server's, 3 s without a message and then 1.5 s without a pong, later), the media
    goes on: no reconnect, and the socket carries the call's events again afterwards."""
    need_nft()
    booking = await booking_factory()
    port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
    with ClientNamespace(Impairment()) as namespace:
        client = await browsers.page("client", camera="red", netns_name=namespace.name)
        psychologist = await browsers.page("psychologist", camera="blue")
        await psychologist.goto(
            pages.call_url(server.base_url, booking.session.id, booking.psychologist_token)
        )
        await client.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
        await pages.wait_phase(client, "connected")
        await pages.wait_remote_colours(client, ["blue"])
        await pages.wait_remote_colours(psychologist, ["red"])

        drop_signaling_replies(namespace.name, port)
        try:
            muted_at = time.monotonic()
            for _ in range(40):  # bounded: the 3.5 s the socket hears nothing
                if time.monotonic() - muted_at >= 3.5:
                    break
                await asyncio.sleep(0.1)
            await pages.wait_frames_rising(client, 5)  # the media did flow meanwhile
        finally:
            undrop_signaling_replies(namespace.name)
        log = await client.evaluate("window.smilingCall.log")
        reconnects = [e for e in log if e["event"] == "reconnect"]
        assert reconnects == [], reconnects
        assert await client.evaluate("window.smilingCall.reconnects") == 0
        # the socket is alive again: the psychologist's camera switched off reaches the client
        await psychologist.locator("#btn-camera").click()
        await client.wait_for_function(
            "window.smilingCall.participants.some((p) => p.media.video === false)",
            timeout=15000,
        )
