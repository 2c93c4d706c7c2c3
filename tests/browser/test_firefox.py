"""Chromium ↔ Firefox through the relay on the project's own page: both decode (frames counted
from getStats), mute / camera / screen-share state is seen across, and Firefox rejoins after a
reload. Firefox is Debian's firefox-esr driven over WebDriver BiDi (tests/browser/firefox.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from synth import netns
from tests.browser import e2ee_helpers as e2ee
from tests.browser import firefox, pages
from tests.browser.conftest import Browsers, Server
from tests.helpers import BookingFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]


@pytest.fixture
async def ff(server: Server, browser_netns: netns.Netns) -> AsyncIterator[firefox.FirefoxPage]:
    with firefox.default_route(browser_netns):
        async with firefox.launch_firefox(urlsplit(server.base_url).hostname or "") as page:
            yield page


async def _ff_phase(ff: firefox.FirefoxPage, phase: str, within_s: float = 25.0) -> None:
    await ff.wait_for(
        f"(() => {{ const s = window.smilingCall; if (s && s.phase === 'error') "
        f"throw new Error('call error: ' + JSON.stringify(s.error)); "
        f"return s && s.phase === {phase!r}; }})()",
        f"phase {phase}",
        within_s,
    )


async def _ff_remote_media(ff: firefox.FirefoxPage, kind: str, on: bool) -> None:
    js = "true" if on else "false"
    await ff.wait_for(
        f"window.smilingCall.participants.length === 1 && "
        f"window.smilingCall.participants[0].media[{kind!r}] === {js}",
        f"remote {kind} {'on' if on else 'off'}",
    )


async def _ff_frames_rising(ff: firefox.FirefoxPage, by: int = 15) -> None:
    start = await ff.wait_inbound(lambda s: s["video"]["framesDecoded"] > 0, "decoded video")
    base = start["video"]["framesDecoded"]
    await ff.wait_inbound(lambda s: s["video"]["framesDecoded"] >= base + by, f"{by} more frames")


async def test_chromium_and_firefox_call_through_the_relay(
    browsers: Browsers,
    server: Server,
    booking_factory: BookingFactory,
    ff: firefox.FirefoxPage,
) -> None:
    booking = await booking_factory()
    sid = booking.session.id
    chromium = await browsers.page("psychologist")
    await chromium.goto(pages.call_url(server.base_url, sid, booking.psychologist_token))
    await pages.wait_phase(chromium, "connected")
    await ff.goto(pages.call_url(server.base_url, sid, booking.client_token))
    await _ff_phase(ff, "connected")

    # Both decode each other's video; audio arrives both ways.
    await pages.wait_video_decoding(chromium)
    await pages.wait_frames_rising(chromium, 15)
    await pages.wait_audio_flowing(chromium)
    await _ff_frames_rising(ff)
    await ff.wait_inbound(lambda s: s["audio"]["packetsReceived"] > 20, "audio packets")
    # End-to-end encryption (policy "preferred") works across the two: Firefox uses
    # RTCRtpScriptTransform, and both show the same safety code.
    chromium_e2ee = await e2ee.wait_e2ee(chromium, "s.mode === 'e2ee' && s.code")
    ff_code = await ff.wait_for(
        "window.smilingCall.e2ee && window.smilingCall.e2ee.mode === 'e2ee' && "
        "window.smilingCall.e2ee.code",
        "E2EE in Firefox",
    )
    assert ff_code == chromium_e2ee["code"]

    # Mute and camera off in Firefox: Chromium sees both, then both back.
    await ff.click("#btn-mic")
    await pages.wait_remote_media(chromium, "audio", False)
    await ff.click("#btn-camera")
    await pages.wait_remote_media(chromium, "video", False)
    await ff.click("#btn-mic")
    await pages.wait_remote_media(chromium, "audio", True)
    await ff.click("#btn-camera")
    await pages.wait_remote_media(chromium, "video", True)
    await pages.wait_frames_rising(chromium, 10)

    # Chromium mutes, turns its camera off and shares its screen: Firefox sees each.
    await chromium.click("#btn-mic")
    await _ff_remote_media(ff, "audio", False)
    await chromium.click("#btn-mic")
    await _ff_remote_media(ff, "audio", True)
    await chromium.click("#btn-camera")
    await _ff_remote_media(ff, "video", False)
    await chromium.click("#btn-camera")
    await _ff_remote_media(ff, "video", True)
    await chromium.click("#btn-screen")
    await _ff_remote_media(ff, "screen", True)
    await _ff_frames_rising(ff, 10)
    await chromium.click("#btn-screen")
    await _ff_remote_media(ff, "screen", False)

    # (Firefox itself cannot share a screen here: headless firefox-esr has no screen to capture
    # and getDisplayMedia answers NotFoundError.)

    # A reload of the Firefox page rejoins the call; media flows again both ways.
    await ff.reload()
    await _ff_phase(ff, "connected")
    await _ff_frames_rising(ff)
    decoded = await pages.wait_video_decoding(chromium)
    await pages.wait_video_decoding(chromium, decoded + 15)
    await pages.wait_remote_count(chromium, 1)
