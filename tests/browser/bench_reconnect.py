"""Reconnection figures (issue 15): outage length → time until media flows both ways again.

Two Chromium pages on the project's call page through the relay; the client's Chromium runs in
a network namespace of its own and all its packets are dropped (nftables, TCP and UDP) for the
outage, then let through. Measured from the link's return until each page's decoded-frame
counter rises again for the other's picture (polled every 100 ms), and when the page noticed
the cut. Run by `scripts/bench_reconnect` (BENCH_RECONNECT_OUTAGES="5 30" by default).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import pytest

from synth.impair import ClientNamespace, Impairment
from tests.browser import pages
from tests.browser.conftest import Browsers, Server
from tests.browser.test_reconnect import PEER_EVENTS, cut, need_nft, restore
from tests.helpers import BookingFactory

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]

OUTAGES = [float(s) for s in os.environ.get("BENCH_RECONNECT_OUTAGES", "5 30").split()]


async def frames_decoded(page: Page) -> int:
    stats = await pages.inbound(page)
    return int(stats["video"]["framesDecoded"])


async def rising_after(page: Page, started: float, limit_s: float) -> float:
    """Seconds from `started` until the page's decoded frames rise twice in a row."""
    before = await frames_decoded(page)
    rises = 0
    deadline = started + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = await frames_decoded(page)
        rises = rises + 1 if now > before else 0
        before = now
        if rises >= 2:
            return time.monotonic() - started
    raise TimeoutError(f"no media within {limit_s} s of the link's return")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("outage", OUTAGES)
async def test_outage_to_media(
    outage: float, browsers: Browsers, server: Server, booking_factory: BookingFactory
) -> None:
    need_nft()
    booking = await booking_factory()
    with ClientNamespace(Impairment()) as namespace:
        client = await browsers.page("client", camera="red", netns_name=namespace.name)
        psychologist = await browsers.page("psychologist", camera="blue")
        await psychologist.goto(
            pages.call_url(server.base_url, booking.session.id, booking.psychologist_token)
        )
        await client.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
        await pages.wait_remote_colours(client, ["blue"])
        await pages.wait_remote_colours(psychologist, ["red"])
        cut(namespace.name)
        cut_at = time.monotonic()
        try:
            await client.wait_for_function(
                "window.smilingCall.log.some((e) => e.event === 'reconnect')",
                timeout=outage * 1000 + 5000,
            )
            detected = time.monotonic() - cut_at
            await asyncio.sleep(max(0.0, outage - (time.monotonic() - cut_at)))  # the outage
        finally:
            restore(namespace.name)
        back = time.monotonic()
        to_client, to_psychologist = await asyncio.gather(
            rising_after(client, back, 30), rising_after(psychologist, back, 30)
        )
        peer = await psychologist.evaluate(PEER_EVENTS)
        print(
            f"\nBENCH outage={outage:g}s detected={detected:.2f}s "
            f"media-to-client={to_client:.2f}s media-to-psychologist={to_psychologist:.2f}s "
            f"both={max(to_client, to_psychologist):.2f}s other-side-saw={peer}"
        )
