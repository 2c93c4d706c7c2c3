"""One Chromium and one aiortc participant in the same room: the relay must not assume that both
ends are browsers (codecs, SDP details, RTCP feedback all differ)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from storage.base import Storage
from synth.client import CallClient
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.browser import pages
from tests.browser.conftest import Browsers, Server
from tests.helpers import BookingFactory

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]


async def test_browser_client_and_aiortc_psychologist_see_and_hear_each_other(
    browsers: Browsers, server: Server, booking_factory: BookingFactory, storage: Storage
) -> None:
    booking = await booking_factory()
    page = await browsers.page("browser-client", camera="green")
    await page.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
    await pages.wait_phase(page, "connected")
    stored = await storage.get_session(booking.session.id)
    assert stored is not None and stored.meeting_link is not None

    bot = CallClient(server.base_url, booking.psychologist_token)
    try:
        await bot.connect()
        joined = await bot.join(stored.meeting_link)
        browser_socket = joined["participants"][0]["socketId"]
        await bot.publish(PatternVideoTrack(source_id=7), ToneAudioTrack(source_id=7))

        # The browser decodes the aiortc participant's video and receives its audio.
        await pages.wait_remote_count(page, 1)
        await pages.wait_video_decoding(page)
        await pages.wait_frames_rising(page, 15)
        await pages.wait_audio_flowing(page)
        await page.locator(".tile-remote").first.wait_for(state="visible")
        # what it shows is the aiortc participant's pattern (source 7), read off its <video>
        await pages.wait_remote_pattern(page, source_id=7)

        # The aiortc participant decodes the browser's camera and receives its microphone.
        await bot.wait_until(lambda: bot.video_from(browser_socket) is not None, "browser video")
        video = bot.video_from(browser_socket)
        assert video is not None
        await video.wait_for_frames(20, 15)
        assert video.frames_received >= 20
        # ... and it is the browser's camera (green), not the bot's own pattern looped back
        assert video.frames_decoded == 0, video.summary()
        assert video.last_frame is not None
        rgb = video.last_frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
        assert pages.colour_name([round(x) for x in rgb]) == "green", rgb
        await bot.wait_until(lambda: bot.audio_from(browser_socket) is not None, "browser audio")
        audio = bot.audio_from(browser_socket)
        assert audio is not None
        await audio.wait_for_frames(25, 15)

        # Media state from a browser reaches a non-browser participant too.
        await page.click("#btn-mic")
        await bot.wait_for(
            "media-state", lambda d: d.get("socketId") == browser_socket and d["audio"] is False
        )
        await browsers.screenshot(page, "browser-with-aiortc")
    finally:
        # hang up as a participant does (a closed socket alone holds the seat: seat grace)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bot.leave(), 5)
        await bot.close()
    # The aiortc participant's departure is seen by the browser.
    await pages.wait_remote_count(page, 0)
