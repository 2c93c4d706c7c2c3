"""Audio first seen in Chromium: the other participant's leg is limited to 100 kbit/s, so the
relay pauses that participant's video both ways; the page says so on its tile ("Video paused:
weak connection", a status, over the picture: the tile keeps its size), its audio keeps
arriving, and once the limit is lifted the notice goes and the video is back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from storage.base import Storage
from synth.client import CallClient
from synth.impair import ClientNamespace, Impairment
from synth.threaded import ThreadedClient
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.browser import pages
from tests.browser.conftest import ServerFactory
from tests.helpers import BookingFactory
from tests.waiting import eventually

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.media]

NOTICE = "Video paused: weak connection"


@pytest.mark.timeout(300)
async def test_the_page_shows_a_weak_participants_video_paused_and_keeps_its_voice(
    browsers: object,
    serve: ServerFactory,
    booking_factory: BookingFactory,
    storage: Storage,
) -> None:
    server = await serve(relay_allowed_peer_ranges=("10.77.0.0/24", "10.213.0.0/16"))
    from tests.browser.conftest import launch_browsers

    booking = await booking_factory()
    async with launch_browsers(server.base_url, "audio-first") as chromium:
        page = await chromium.page("browser-client", camera="green")
        await page.goto(pages.call_url(server.base_url, booking.session.id, booking.client_token))
        await pages.wait_phase(page, "connected")
        stored = await storage.get_session(booking.session.id)
        assert stored is not None and stored.meeting_link is not None
        room = stored.meeting_link

        with ClientNamespace(Impairment()) as namespace:
            remote = ThreadedClient(namespace.name, name="weak-bot")
            remote.start()
            url = namespace.url_for_clients(server.base_url)

            async def bot_joins() -> CallClient:
                bot = CallClient(url, booking.psychologist_token)
                await bot.connect()
                await bot.join(room)
                await bot.publish(
                    PatternVideoTrack(source_id=7),
                    ToneAudioTrack(source_id=7),
                    voice_bitrate=32_000,
                )
                return bot

            bot = await remote.run(bot_joins())
            try:
                await pages.wait_remote_count(page, 1)
                await pages.wait_video_decoding(page)
                tile = page.locator(".tile-remote").first
                notice = tile.locator(".badge-weak")
                assert await notice.is_hidden()
                before = await tile.bounding_box()

                namespace.reshape(100)
                await eventually(
                    lambda: any(
                        m["event"] == "video-paused" and m["data"]["direction"] == "up"
                        for m in list(bot.history)
                    ),
                    "the relay pausing the weak bot's video",
                    60,
                )
                await notice.wait_for(state="visible", timeout=10_000)
                assert (await notice.inner_text()).strip() == NOTICE
                assert await notice.get_attribute("role") == "status"
                after = await tile.bounding_box()
                assert before is not None and after is not None
                assert (round(after["width"]), round(after["height"])) == (
                    round(before["width"]),
                    round(before["height"]),
                ), "the notice must not change the tile's layout"
                await pages.wait_audio_flowing(page, packets=100, within_ms=20_000)

                namespace.reshape(None)
                await notice.wait_for(state="hidden", timeout=120_000)
                await pages.wait_frames_rising(page, 15, within_ms=30_000)
            finally:
                await remote.run(bot.close())
                remote.stop()


OUTBOUND_VIDEO_FRAMES = """async () => {
  let frames = 0;
  for (const pc of window.smilingCall.peerConnections()) {
    (await pc.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") frames += s.framesEncoded ?? 0;
    });
  }
  return frames;
}"""


@pytest.mark.timeout(300)
async def test_a_weak_chromium_stops_sending_its_video_when_asked_and_sends_it_again(
    serve: ServerFactory, booking_factory: BookingFactory, storage: Storage
) -> None:
    """Chromium itself behind the 100 kbit/s leg (launched from a thread in the weak namespace):
    the relay asks it to pause its video, the page stops encoding (encodings inactive), shows
    the notice on its own preview, its voice still reaches the other side; lifted, it sends
    video again."""
    server = await serve(relay_allowed_peer_ranges=("10.77.0.0/24", "10.213.0.0/16"))
    from contextlib import AsyncExitStack

    from tests.browser.conftest import launch_browsers

    booking = await booking_factory()
    with ClientNamespace(Impairment()) as namespace:
        remote = ThreadedClient(namespace.name, name="weak-chromium")
        remote.start()
        stack = AsyncExitStack()

        async def open_page() -> Any:
            chromium = await stack.enter_async_context(
                launch_browsers(server.base_url, "audio-first-weak")
            )
            page = await chromium.page("weak-browser")
            await page.goto(
                pages.call_url(server.base_url, booking.session.id, booking.client_token)
            )
            await pages.wait_phase(page, "connected")
            return page

        bot: CallClient | None = None
        try:
            page = await remote.run(open_page())
            stored = await storage.get_session(booking.session.id)
            assert stored is not None and stored.meeting_link is not None
            bot = CallClient(server.base_url, booking.psychologist_token)
            await bot.connect()
            joined = await bot.join(stored.meeting_link)
            browser_socket = joined["participants"][0]["socketId"]
            await bot.publish(
                PatternVideoTrack(source_id=7), ToneAudioTrack(source_id=7), voice_bitrate=32_000
            )
            await remote.run(pages.wait_video_decoding(page))
            await bot.wait_until(lambda: bot.video_from(browser_socket) is not None, "its video")
            notice = page.locator(".tile-local .badge-weak")

            def told(event: str, reason: str) -> bool:
                return any(
                    m["event"] == event
                    and m["data"] == {**m["data"], "socketId": browser_socket, "direction": "up"}
                    and m["data"]["reason"] == reason
                    for m in list(bot.history)
                )

            namespace.reshape(100)
            try:
                await eventually(
                    lambda: told("video-paused", "weak-connection"),
                    "the browser's video paused",
                    60,
                )
            except AssertionError:
                reconnects = await remote.run(page.evaluate("window.smilingCall.reconnects"))
                log = await remote.run(page.evaluate("window.smilingCall.log"))
                raise AssertionError(f"no pause; page reconnects={reconnects}, log={log}") from None
            await remote.run(notice.wait_for(state="visible", timeout=10_000))
            # the page stopped encoding: no new frames over 2 s (a measurement window)
            await asyncio.sleep(1.0)  # what was being encoded when the event came
            first = await remote.run(page.evaluate(OUTBOUND_VIDEO_FRAMES))
            await asyncio.sleep(2.0)
            assert await remote.run(page.evaluate(OUTBOUND_VIDEO_FRAMES)) == first
            await bot.wait_until(
                lambda: bot.counter_from(browser_socket, "audio") is not None, "its audio"
            )
            audio = bot.counter_from(browser_socket, "audio")
            assert audio is not None, bot.track_map
            heard = audio.media_packets
            await eventually(lambda: audio.media_packets > heard + 100, "the browser's voice", 10)

            namespace.reshape(None)
            await eventually(
                lambda: told("video-resumed", "recovered"), "the browser's video back", 120
            )
            frames = await remote.run(page.evaluate(OUTBOUND_VIDEO_FRAMES))
            for _ in range(40):  # bounded: 20 s
                if await remote.run(page.evaluate(OUTBOUND_VIDEO_FRAMES)) > frames + 30:
                    break
                await asyncio.sleep(0.5)
            else:
                raise AssertionError("the page did not encode video again")
            await remote.run(notice.wait_for(state="hidden", timeout=10_000))
        finally:
            if bot is not None:
                await bot.close()
            await remote.run(stack.aclose())
            remote.stop()
